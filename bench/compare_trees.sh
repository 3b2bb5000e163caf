#!/usr/bin/env bash
# Batch-1 graphed decode (bench/gpu_bench.py) of this checkout against another tree of the
# repository (e.g. `git archive REV runtime bench granite_ops_kit | tar -x -C .before`), on
# the same card in the same run, interleaved ROUNDS times so clock drift hits both alike.
#   bash bench/compare_trees.sh .before OUT_DIR [MODELS] [ROUNDS]
set -euo pipefail
other=$(cd "$1" && pwd); out=$2
models=${3:-granite-4.0-h-micro,granite-4.0-h-tiny}; rounds=${4:-2}
here=$(pwd)
args=(--models "$models" --batches 1 --prompts "" --kernels "" --variants none
      --no-transformers --rounds 3)
for i in $(seq "$rounds"); do
  for tree in "$other" "$here"; do
    name=$([ "$tree" = "$here" ] && echo this || echo other)
    (cd "$tree" && PYTHONPATH="$tree:$tree/runtime:${PYTHONPATH:-}" \
      timeout 300 python3 bench/gpu_bench.py "${args[@]}") > "$out/$name-$i.txt" 2>&1 \
      || { echo "$name round $i failed:"; tail -5 "$out/$name-$i.txt"; exit 1; }
    grep -h "decode_b1_graph:" "$out/$name-$i.txt" | sed "s/^/$name $i: /" || true
  done
done
