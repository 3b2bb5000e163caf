#!/usr/bin/env bash
# One device call for served throughput against the engine's own step, prompts beside the
# decode steps (the default), each stage bounded so the ones before it come back if a
# later one runs out (64 x 2,048 and the ITL probe are bench/prefill_round.sh's):
#   1. h-micro at 64 x 512/256 (whole prompts sharing replays), with its engine-step ceiling
#   2. h-tiny (MoE) at 64 x 512/256, with its engine-step ceiling
#   3. h-tiny's graphed batch-64 step against its memory roofline (gpu_bench)
#   bash bench/serve_round.sh OUT_DIR   (about 380 s on an H100; the gpu tests are in
#   bench/beside_round.sh)
set -uo pipefail
out=$1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
serve() {  # serve LIMIT NAME ARGS...: serve_bench, its summary lines shown
  local limit=$1 name=$2
  shift 2
  timeout "$limit" python3 bench/serve_bench.py --prefill-chunks 2048 --prefill-beside 1 \
    --logs "$out" --json "$out/serve_bench-$name.json" "$@" 2>&1 | grep -v "^INFO" | tail -10
}
serve 120 h-micro-shared --models granite-4.0-h-micro --rows 64x512/256
serve 170 h-tiny-shared --models granite-4.0-h-tiny --rows 64x512/256
timeout 120 python3 bench/gpu_bench.py --models granite-4.0-h-tiny --batches 64 --prompts "" \
  --kernels "" --variants none --no-transformers --profile-graph 64 > "$out/gpu_bench-h-tiny.txt" 2>&1
grep -E "decode_b64|roofline" "$out/gpu_bench-h-tiny.txt" | head -4
