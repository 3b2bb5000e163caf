#!/usr/bin/env bash
# One device call for prompts beside the decode steps (engine/prefill_stream.py), in order of
# what matters, each stage bounded so the ones before it come back if a later one runs out:
#   1. bench/beside_parity.py: beside must give the inside run's greedy tokens
#   2. the gpu tests of chunk graphs and of reporting while the GPU runs
#   3. serve_bench, h-micro, a server with prompts beside and one with them inside
#   4. prefill_overlap at 1,024 and 2,048 tokens: decode's slowdown beside each chunk size
#   bash bench/beside_round.sh OUT_DIR   (about 560 s on an H100)
set -uo pipefail
out=$1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/card.txt"
timeout 70 python3 bench/beside_parity.py 2>&1 | grep -v Warning | tee "$out/beside_parity.txt" \
  | grep -v "same as inside"
timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_runtime_chunk_graphs.py \
  tests/test_runtime_reporting.py > "$out/gpu_tests.txt" 2>&1
tail -3 "$out/gpu_tests.txt"
timeout 320 python3 bench/serve_bench.py --models granite-4.0-h-micro \
  --rows 64x512/256,64x2048/128 --prefill-chunks 2048 --prefill-beside 1,0 \
  --itl-under-prefill 64 --logs "$out" --json "$out/serve_bench.json" 2>&1 | grep -v "^INFO" | tail -14
timeout 70 python3 bench/prefill_overlap.py --lengths 1024,2048 2>&1 | tee "$out/prefill_overlap.txt" \
  | tail -6
