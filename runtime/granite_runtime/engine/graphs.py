"""CUDA graphs for decode steps: one graph per batch size, captured on first use.

A decode step launches a few kernels per layer; at batch 1 their launch overhead, not the
GPU, sets the speed (REFERENCE.md 3: transformers decodes h-micro at 11 tok/s). A graph
replays the whole step as one launch. Inputs go through static tensors (tokens, slots,
positions) and the step uses `Batch.graphable`, whose shapes never change and which never
reads values back to the host. All graphs share one memory pool (they never run at once).

Capture happens before any sequence holds a slot (`capture`): warming up writes into slots
0..B-1, which is harmless while they are free (a new sequence's state is reset on admission
and its keys are masked until written).
"""

from __future__ import annotations

import torch

from granite_runtime.engine.batch import Batch
from granite_runtime.engine.cache import HybridCache
from granite_runtime.layers.moe import graph_safe_moe

# Decode steps replay CUDA graphs captured at start-up: one per batch size up to this,
# then one every PADDED_STEP rows up to the slot count; a batch between two of those
# replays the larger one, its extra rows on a pad slot no sequence holds.
MAX_GRAPHED_BATCH = 64
PADDED_STEP = 16


def graph_sizes(max_num_seqs: int) -> list[int]:
    """Batch sizes to capture, largest first (smaller graphs then carve their workspace
    out of the larger blocks already in the shared pool)."""
    sizes = set(range(1, min(max_num_seqs, MAX_GRAPHED_BATCH) + 1))
    sizes.update(range(MAX_GRAPHED_BATCH + PADDED_STEP, max_num_seqs, PADDED_STEP))
    sizes.add(max_num_seqs)
    return sorted(sizes, reverse=True)


# Without Triton (GKIT_TRITON=0), the static step copies each row's KV: at most this much
# per attention layer per graphed step. With it, decode attention reads the pool in place.
KV_GATHER_BUDGET = 256 << 20


def record(step, out: torch.Tensor, pool, stream=None) -> torch.cuda.CUDAGraph:
    """A graph of `out.copy_(step())`, in memory pool `pool` (None: a new one), captured on
    `stream` (None: PyTorch's one capture stream). Graphs captured on one stream share its
    cuBLAS workspace, whatever their pools (pytorch/pytorch#193402): graphs that replay at
    the same time as others must be captured on a stream of their own.

    Warms up (lazy initialisation, Triton autotuning) on the current stream, not a new side
    stream per graph: the caching allocator keeps freed blocks per stream, so a side stream
    per size left each warm-up's workspace reserved (+7-13% of the whole footprint measured
    on an H200, bench/NOTES.md); on the current stream the blocks go back to the pool that
    eager steps use."""
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        out.copy_(step())
    return graph


class GraphedDecoder:
    def __init__(
        self, model, cache: HybridCache, max_batch: int, step=None, pad_slot: int | None = None
    ):
        """`step` replaces model(tokens, batch, cache) in the graph, e.g. a torch.compile'd
        forward whose fused kernels then replay without launch gaps. `pad_slot`, a cache
        slot no sequence ever holds, lets a batch replay the next larger graph: the extra
        rows compute on that slot and their logits are dropped."""
        self.model, self.cache, self.max_batch = model, cache, max_batch
        self.step = step if step is not None else model
        self.pad_slot = pad_slot
        self.graphs: dict[int, tuple] = {}
        self.pool = None
        self.out: torch.Tensor | None = None  # (largest batch, 1, vocab) fp32 logits
        self.top_k = getattr(model.config, "top_k", 0) if model.config.num_experts else 0
        if self.top_k:
            self.moe_any_batch = graph_safe_moe(model)

    def supports(self, batch_size: int) -> bool:
        # MoE decode is static at any batch through grouped GEMMs (torch._grouped_mm, bf16
        # on Hopper), else only while tokens x top_k is small (gathered experts); and the
        # static attention copies every row's whole KV row each step: past a budget the
        # eager step (which reads only the written prefix) is the better deal.
        return (
            batch_size <= self.max_batch
            and (not self.top_k or self.moe_any_batch or batch_size * self.top_k <= 64)
            and (
                self._attention_in_place() or batch_size * self._kv_row_bytes() <= KV_GATHER_BUDGET
            )
        )

    def _attention_in_place(self) -> bool:
        """The Triton decode attention reads the pool in place: no per-row KV copy."""
        return self.cache.k.is_cuda and self.model.kernels.triton

    def _kv_row_bytes(self) -> int:
        """Bytes the static step gathers per row per attention layer (keys and values)."""
        k = self.cache.k
        return 2 * k[0, 0].numel() * k.element_size() if k.numel() else 0

    def _capture(self, b: int) -> tuple:
        device = self.cache.k.device if self.cache.k.numel() else self.cache.ssm.device
        tokens = torch.zeros(b, 1, dtype=torch.long, device=device)
        slots = torch.arange(b, dtype=torch.long, device=device)
        starts = torch.zeros(b, dtype=torch.long, device=device)
        batch = Batch.graphable(slots, starts)
        if self.out is None or self.out.shape[0] < b:
            vocab = self.model.config.vocab_size
            self.out = torch.empty(b, 1, vocab, dtype=torch.float32, device=device)
        # every graph writes its logits into one shared buffer: a separate output per
        # graph kept 64 of them alive (835 MB for h-micro at 64 graphs, bench/NOTES.md)
        logits = self.out[:b]
        graph = record(lambda: self.step(tokens, batch, self.cache), logits, self.pool)
        self.pool = graph.pool()
        return graph, tokens, slots, starts, logits

    def capture(self, sizes) -> None:
        """Capture a graph for each batch size; call while no slot is in use."""
        for b in sizes:
            if self.supports(b) and b not in self.graphs:
                self.graphs[b] = self._capture(b)
        torch.cuda.synchronize()

    def __call__(
        self, tokens: torch.Tensor, slots: list[int], starts: list[int]
    ) -> torch.Tensor | None:
        """Logits (B, 1, vocab) of one decode step (cache updated in place), or None when
        no graph was captured for this batch size (the caller runs the step eagerly).
        The logits tensor is the graph's own: read it before the next step."""
        b = len(slots)
        size = self.size_for(b)
        if size is None:
            return None
        graph, t_in, s_in, p_in, logits = self.graphs[size]
        if size > b:  # padded rows: token 0 at position 0 of the pad slot
            t_in[b:].zero_()
            slots = [*slots, *[self.pad_slot] * (size - b)]
            starts = [*starts, *[0] * (size - b)]
        t_in[:b].copy_(tokens, non_blocking=True)
        s_in.copy_(torch.tensor(slots, dtype=torch.long), non_blocking=True)
        p_in.copy_(torch.tensor(starts, dtype=torch.long), non_blocking=True)
        graph.replay()
        return logits[:b]

    def size_for(self, b: int) -> int | None:
        """The captured graph a batch of b rows replays: its own, else (with a pad slot) the
        smallest larger one."""
        if b in self.graphs:
            return b
        if self.pad_slot is None:
            return None
        return min((s for s in self.graphs if s > b), default=None)
