#!/usr/bin/env bash
# One device call, in order of what matters most, each stage bounded so the ones before
# it come back even if a later one runs out of time:
#   1. batch-1 graphed decode of this tree against OTHER_TREE (bench/compare_trees.sh)
#   2. the gpu tests
#   3. serve_bench for h-micro at ROWS
#   bash bench/device_round.sh OTHER_TREE OUT_DIR [ROWS]
set -uo pipefail
other=$1; out=$2; rows=${3:-1x512/256,64x512/256}
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/card.txt"
timeout 200 bash bench/compare_trees.sh "$other" "$out" granite-4.0-h-micro,granite-4.0-h-tiny 1 \
  | tee "$out/compare.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_runtime_gpu.py \
  > "$out/gpu_tests.txt" 2>&1
tail -5 "$out/gpu_tests.txt"
timeout 150 python3 bench/serve_bench.py --models granite-4.0-h-micro --rows "$rows" --rounds 1 --slots 64 \
  --json "$out/serve_bench.json" 2>&1 | tail -12
