"""What an engine prepares on a GPU before it serves: the prefill kernels compiled, decode
and chunk graphs captured, and the stream prompts run on. All of it before any sequence
holds a slot: warming up and capturing write into slots 0..B-1."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from granite_runtime.engine import chunk_graphs, graphs
from granite_runtime.engine.batch import Batch
from granite_runtime.engine.cache import HybridCache
from granite_runtime.engine.prefill_share import gemms_leaving_free, share_from_env
from granite_runtime.engine.prefill_stream import PrefillStream
from granite_runtime.engine.scheduler import MIN_PREFILL_TOKENS


@dataclass
class Prepared:
    graphs: graphs.GraphedDecoder | None = None
    chunk_graphs: chunk_graphs.GraphedChunks | None = None
    prefill: PrefillStream | None = None  # None: prompts run inside the decode steps


@torch.inference_mode()
def warm_up_prefill(model, cache: HybridCache, largest: int) -> None:
    """Prompt chunks through slot 0, powers of two from MIN_PREFILL_TOKENS to `largest`,
    so Triton compiles and autotunes the prefill kernels now rather than during requests
    (seconds of compiling): the multiples of MIN_PREFILL_TOKENS that the scheduler cuts
    share these lengths' specialisations and scan-chunk counts. Every rank runs it, in
    step, as every rank captures the graphs (tensor parallelism)."""
    lengths, n = {largest}, MIN_PREFILL_TOKENS
    while n < largest:
        lengths.add(n)
        n *= 2
    device = model.model.embed_tokens.weight.device
    for length in sorted(lengths, reverse=True):
        tokens = torch.zeros(1, length, dtype=torch.long, device=device)
        model(tokens, Batch.make([0], [0], device), cache)
        cache.reset(0)


@torch.inference_mode()  # as steps run: the constants layers derive are inference tensors
def capture_graphs(
    model, cache: HybridCache, max_num_seqs: int, largest: int, pad_slot: int | None,
    beside: bool,
) -> Prepared:  # fmt: skip
    """Decode graphs for every batch size, then chunk graphs for every padded chunk length
    up to `largest`; with `beside`, the chunk graphs get a memory pool and a capture stream
    of their own (they run at the same time as decode graphs) and a PrefillStream to run
    on, sharing the GPU as GKIT_PREFILL_* say (engine/prefill_share.py)."""
    sizes = graphs.graph_sizes(max_num_seqs)
    decoder = graphs.GraphedDecoder(model, cache, sizes[0], pad_slot=pad_slot)
    decoder.capture(sizes)
    if not chunk_graphs.can_graph(model, cache):
        return Prepared(decoder)
    chunks = chunk_graphs.GraphedChunks(model, cache, decoder.pool, beside_decode=beside)
    lengths = chunk_graphs.chunk_lengths(MIN_PREFILL_TOKENS, largest)
    # whole prompts share a replay only beside the decode steps: inside, a step's chunks
    # each replay their own graph (Engine._graphed). GKIT_SHARED_PROMPTS=0 keeps one prompt
    # a replay, to measure what sharing gives.
    shared = beside and os.environ.get("GKIT_SHARED_PROMPTS", "1") != "0"
    device = model.model.embed_tokens.weight.device
    if not beside:
        chunks.capture(lengths, None)
        return Prepared(decoder, chunks)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    share = share_from_env(os.environ, sms)
    with gemms_leaving_free(share.free_sms):
        chunks.capture(lengths, chunk_graphs.row_counts(lengths, largest) if shared else None)
    return Prepared(decoder, chunks, PrefillStream(chunks, largest, device, share))
