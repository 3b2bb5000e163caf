#!/usr/bin/env bash
# One device call for prompt prefill through the chunk graphs, each stage bounded so the
# ones before it come back if a later one runs out:
#   1. the chunk-graph gpu tests (graphs against eager chunks, shared replays included, the
#      block attention kernel against SDPA at h-micro's shape), and prompts and the
#      chunked scan against the CPU reference
#   2. a 2,048-token chunk graph at starts 0 and 8,192, the ways prefill_overhead.py's
#      module docstring lists (rows; blocks as in round 20; the runtime's; ...), against the
#      eager chunk, and the runtime's replay's kernels by device time
#   3. h-micro served, 64 x 2048/128 and the ITL probe, at chunk 1,536, 2,048 and 1,024
#      (TTFT p99 and the probe pull against each other: round 18), a server each
#   bash bench/prefill_round.sh OUT_DIR [CHUNK ...]   (about 520 s on an H100 with the
#   three default chunk sizes, 105 s less for each one left out)
set -uo pipefail
out=$1
shift
chunks=("${@:-1536 2048 1024}")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
timeout 130 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_runtime_chunk_graphs.py \
  "tests/test_runtime_gpu.py::test_cuda_fp32_matches_cpu_reference" \
  "tests/test_runtime_gpu.py::test_cuda_bf16_is_within_bf16_tolerance" \
  "tests/test_runtime_gpu.py::test_prompt_in_chunks_matches_the_cpu_reference" \
  "tests/test_runtime_gpu.py::test_triton_chunked_scan_matches_the_reference" \
  > "$out/gpu_tests_chunk_graphs.txt" 2>&1
tail -3 "$out/gpu_tests_chunk_graphs.txt"
timeout 100 python3 bench/prefill_overhead.py --length 2048 --starts 0,8192 2>&1 \
  | grep -v Warning | tee "$out/prefill_overhead-starts.txt" | grep "^start"
for chunk in ${chunks[@]}; do
  timeout 105 python3 bench/serve_bench.py --models granite-4.0-h-micro --rows 64x2048/128 \
    --itl-under-prefill 64 --prefill-chunks $chunk --prefill-beside 1 \
    --logs "$out" --json "$out/serve_bench-chunk-$chunk.json" 2>&1 | grep -v "^INFO" | tail -5
done
