#!/usr/bin/env bash
# Device calls for the decode steps' share of the GPU beside prompt chunks
# (engine/prefill_share.py), each stage bounded so the ones before it come back:
#   bash bench/share_round.sh OUT_DIR overlap   (about 330 s on an H100)
#     1. the gpu tests of the knobs (beside on a share = inside, for each knob)
#     2. prefill_overlap at 2,048-token chunks: the b1 and b64 steps beside them with the
#        chunks' GEMMs leaving 0 or 32 SMs free, and on green contexts of 66, 100 and 116
#        SMs (66 shows whether a replayed graph keeps to its green context at all: the
#        chunk alone should take ~2x as long)
#     3. the same, no knob, with CUDA_DEVICE_MAX_CONNECTIONS=32 (more hardware queues, in
#        case the decode launches wait behind queued chunks in a shared one)
#   bash bench/share_round.sh OUT_DIR serve [ENVS]   (about 90 s a server on an H100)
#     h-micro served, 64 x 2048/128 (TTFT p99) and the ITL probe, chunk 2,048, a server for
#     each of ENVS (serve_bench --server-envs; default: none, then each knob)
set -uo pipefail
out=$1
stage=$2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
if [ "$stage" = overlap ]; then
  timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_runtime_chunk_graphs.py \
    -k share_of_the_gpu > "$out/gpu_tests_share.txt" 2>&1
  tail -3 "$out/gpu_tests_share.txt"
  timeout 150 python3 bench/prefill_overlap.py --lengths 2048 --batches 1,64 --sm-carveouts 0,32 \
    --green-sms 0,66,100,116 2>&1 | grep -v Warning | tee "$out/prefill_overlap-share.txt"
  CUDA_DEVICE_MAX_CONNECTIONS=32 timeout 60 python3 bench/prefill_overlap.py --lengths 2048 \
    --batches 1,64 2>&1 | grep -v Warning | tee "$out/prefill_overlap-connections-32.txt"
elif [ "$stage" = serve ]; then
  envs=${3:-",GKIT_PREFILL_GREEN_SMS=100,GKIT_PREFILL_FREE_SMS=32,GKIT_PREFILL_QUEUED_CHUNKS=1,CUDA_DEVICE_MAX_CONNECTIONS=32"}
  timeout 570 python3 bench/serve_bench.py --models granite-4.0-h-micro --rows 64x2048/128 \
    --itl-under-prefill 64 --prefill-chunks 2048 --prefill-beside 1 --server-envs "$envs" \
    --logs "$out" --json "$out/serve_bench-share.json" 2>&1 | grep -v "^INFO" | tail -40
else
  echo "usage: bash bench/share_round.sh OUT_DIR overlap|serve [ENVS]" >&2
  exit 2
fi
