#!/usr/bin/env bash
# One device call for the chunk graphs' block attention (kernels/triton/chunk_attention.py,
# off unless GKIT_FLASH_CHUNKS=1), each stage bounded so the ones before it come back:
#   1. the chunk-graph gpu tests, both ways (graphs against eager chunks, shared replays
#      included), and the kernel against SDPA at h-micro's shape
#   2. a 2,048-token chunk at starts 0 to 30,720: replay time and attention's device time,
#      one-token rows against query blocks, and the eager chunk (prefill_overhead.py)
#   3. h-micro served, 64 x 2048/128 and the ITL probe, rows then blocks, a server each
#   bash bench/chunk_attention_round.sh OUT_DIR   (about 450 s on an H100)
set -uo pipefail
out=$1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
timeout 130 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_runtime_chunk_graphs.py \
  > "$out/gpu_tests_chunk_graphs.txt" 2>&1
tail -3 "$out/gpu_tests_chunk_graphs.txt"
timeout 90 python3 bench/prefill_overhead.py --length 2048 --starts 0,2048,8192,30720 2>&1 \
  | grep -v Warning | tee "$out/prefill_overhead-starts.txt" | grep "^start"
for flash in 0 1; do
  GKIT_FLASH_CHUNKS=$flash timeout 110 python3 bench/serve_bench.py --models granite-4.0-h-micro \
    --rows 64x2048/128 --itl-under-prefill 64 --prefill-chunks 2048 --prefill-beside 1 \
    --logs "$out" --json "$out/serve_bench-flash-chunks-$flash.json" 2>&1 | grep -v "^INFO" | tail -5
done
