#!/usr/bin/env bash
# One device call for served numbers with prompts beside the decode steps (the default),
# each stage bounded so the ones before it come back if a later one runs out:
#   1. h-micro beside, chunks 1,024 and 2,048: 64 x 512/256, 64 x 2048/128, the ITL probe
#      with the 63 others asking for 1 token (prefill alone) and for 16
#   2. h-tiny (MoE) at 64 x 512/256, beside and inside
#   bash bench/serve_round.sh OUT_DIR   (about 400 s on an H100; the gpu tests are in
#   bench/beside_round.sh, which gives them the time they need)
set -uo pipefail
out=$1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
timeout 230 python3 bench/serve_bench.py --models granite-4.0-h-micro \
  --rows 64x512/256,64x2048/128 --prefill-chunks 1024,2048 --prefill-beside 1 \
  --itl-under-prefill 64 --logs "$out" --json "$out/serve_bench-h-micro.json" 2>&1 \
  | grep -v "^INFO" | tail -16
timeout 200 python3 bench/serve_bench.py --models granite-4.0-h-tiny --rows 64x512/256 \
  --prefill-chunks 2048 --prefill-beside 1,0 --logs "$out" \
  --json "$out/serve_bench-h-tiny.json" 2>&1 | grep -v "^INFO" | tail -8
