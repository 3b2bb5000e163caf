#!/usr/bin/env bash
# One device call for the MoE models, each stage bounded so the ones before it come back:
#   1. h-tiny served at 64 x 512/256, prompts beside and inside the decode steps
#   2. h-tiny's graphed batch-64 step profiled (it is 3 points short of 50% of the roofline)
#   3. h-small at batch 1 and 64, its weights drawn in GPU memory (no checkpoint): an H200
#   bash bench/moe_round.sh OUT_DIR   (about 560 s)
set -uo pipefail
out=$1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
timeout 260 python3 bench/serve_bench.py --models granite-4.0-h-tiny --rows 64x512/256 \
  --prefill-chunks 2048 --prefill-beside 1,0 --logs "$out" --json "$out/serve_bench.json" 2>&1 \
  | grep -v "^INFO" | tail -8
timeout 120 python3 bench/gpu_bench.py --models granite-4.0-h-tiny --batches 64 --prompts "" \
  --kernels "" --variants none --no-transformers --profile-graph 64 > "$out/gpu_bench-h-tiny.txt" 2>&1
grep -E "decode_b64" "$out/gpu_bench-h-tiny.txt" | head -4
timeout 170 python3 bench/gpu_bench.py --models granite-4.0-h-small --draw-on-gpu --batches 1,64 \
  --prompts 4096 --kernels "" --variants none > "$out/gpu_bench-h-small.txt" 2>&1
grep -E "decode_b|prefill 4096" "$out/gpu_bench-h-small.txt" | head -8
