#!/usr/bin/env bash
# One device call for prompts beside the decode steps (engine/prefill_stream.py, the default
# on one GPU), in order of what matters, each stage bounded so the ones before it come back
# if a later one runs out:
#   1. the chunk-graph and reporting gpu tests (whole prompts sharing a replay among them)
#   2. bench/beside_parity.py: beside must give the inside run's greedy tokens
#   3. the other runtime gpu tests, now that engines prefill beside by default
#   4. prefill_overlap at 1,024 and 2,048 tokens (the decode step beside chunks, again)
#   bash bench/beside_round.sh OUT_DIR   (about 480 s on an H100; the chunk graphs' block
#   attention has its own round: bench/prefill_round.sh)
set -uo pipefail
out=$1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/card.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_runtime_chunk_graphs.py \
  tests/test_runtime_reporting.py > "$out/gpu_tests_chunks.txt" 2>&1
tail -3 "$out/gpu_tests_chunks.txt"
timeout 70 python3 bench/beside_parity.py 2>&1 | grep -v Warning | tee "$out/beside_parity.txt" \
  | grep -v "same as inside"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_runtime_gpu.py \
  > "$out/gpu_tests.txt" 2>&1
tail -3 "$out/gpu_tests.txt"
timeout 90 python3 bench/prefill_overlap.py --lengths 1024,2048 2>&1 \
  | grep -v Warning | tee "$out/prefill_overlap.txt" | tail -8
