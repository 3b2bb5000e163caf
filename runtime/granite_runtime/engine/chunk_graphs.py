"""CUDA graphs for prompt chunks: one graph per padded chunk length, captured at start-up.

An eager chunk launches ~1,300 kernels for h-micro and costs ~38 ms of host time on an H100
whether it holds 448 tokens or 2,048, where its GPU work is 7-20 ms
(bench/results/prefill_overhead-h100-*.txt): prefill, and every decode stream sharing a
step with a chunk, ran at the host's pace. A graph replays the chunk as one launch.

A chunk of n tokens replays the smallest captured length >= n, the tokens past n being
padding that leaves no trace in the slot's state (`Batch.padded`); its keys land past the
prompt, where later tokens overwrite them before anything reads them. A chunk whose padded
end would run past the slot's KV row runs eagerly instead.

Prompts shorter than half a chunk can also share one replay (`rows_for`, `replay_prompts`):
a graph of several rows of one padded length, so that four prompts of 512 tokens read the
weights once, as one 2,048-token chunk does; alone, a 512-token chunk keeps ~75% of a
2,048-token one's rate on an H100 (bench/NOTES.md, round 18's serial figures).

Capture warms up on slots 0..rows-1, so it happens before any sequence holds a slot, as for
the decode graphs (engine/graphs.py); both share one memory pool, as they never run at once.
"""

from __future__ import annotations

import torch

from granite_runtime.engine.batch import Batch
from granite_runtime.engine.cache import HybridCache
from granite_runtime.engine.graphs import record
from granite_runtime.layers.moe import graph_safe_moe


def chunk_lengths(smallest: int, largest: int) -> list[int]:
    """Padded lengths to capture: powers of two from `smallest`, the points halfway between
    (64, 96, 128, 192, ...) and `largest` itself, so padding is under a third of a graph."""
    lengths, n = {largest}, smallest
    while n < largest:
        lengths.update(x for x in (n, n * 3 // 2) if x < largest)
        n *= 2
    return sorted(lengths)


# Rows of a graph that prefills several whole prompts at once: each row costs its padded
# length in activations, so rows x length stays within the largest chunk.
MAX_ROWS = 4


def row_counts(lengths, largest: int) -> dict[int, int]:
    """Padded length -> rows, for the lengths that leave room for two rows or more within
    `largest` tokens: four rows of 512 where the chunk is 2,048, two of 1,024."""
    rows = {n: min(MAX_ROWS, largest // n) for n in lengths}
    return {n: r for n, r in rows.items() if r >= 2}


def can_graph(model, cache: HybridCache) -> bool:
    """Whether a padded chunk runs graph-safe here: on CUDA through Triton (whose attention
    reads the pool in place, where the PyTorch path would copy a KV row per token), and for
    MoE models through the grouped GEMMs."""
    if not (cache.ssm.is_cuda or cache.k.is_cuda) or not model.kernels.triton:
        return False
    return not model.config.num_experts or graph_safe_moe(model)


class GraphedChunks:
    def __init__(self, model, cache: HybridCache, pool=None, beside_decode: bool = False):
        """`beside_decode`: these graphs replay at the same time as the decode graphs (on
        a stream of their own), so they get a memory pool and a capture stream of their
        own: two graphs captured on one stream share its cuBLAS workspace (graphs.record),
        and two steps running at once then corrupt each other's products."""
        self.model, self.cache = model, cache
        self.pool = None if beside_decode else pool
        self.capture_stream = torch.cuda.Stream() if beside_decode else None
        self.graphs: dict[int, tuple] = {}  # padded length -> a one-row graph
        self.batched: dict[int, tuple] = {}  # padded length -> a graph of several whole prompts
        self.out: torch.Tensor | None = None  # (MAX_ROWS, 1, vocab) fp32 logits, shared by all

    def capture(self, lengths, rows: dict[int, int] | None = None) -> None:
        """A graph for each padded length that fits the KV row, and one of `rows[length]`
        rows for each length in `rows`; call while no slot is in use."""
        most = min(MAX_ROWS, self.cache.num_slots)  # capture warms up on slots 0..rows-1
        rows = {n: min(r, most) for n, r in (rows or {}).items() if min(r, most) >= 2}
        for length in sorted(lengths, reverse=True):  # smaller ones reuse the larger's blocks
            if length <= self.cache.max_len and length not in self.graphs:
                self.graphs[length] = self._capture(length, 1)
            if length <= self.cache.max_len and length in rows and length not in self.batched:
                self.batched[length] = self._capture(length, rows[length])
        for slot in range(max([1, *rows.values()])):
            self.cache.reset(slot)
        torch.cuda.synchronize()

    def _capture(self, length: int, rows: int) -> tuple:
        device = self.cache.ssm.device if self.cache.ssm.numel() else self.cache.k.device
        tokens = torch.zeros(rows, length, dtype=torch.long, device=device)
        slots = torch.arange(rows, dtype=torch.long, device=device)
        starts = torch.zeros(rows, dtype=torch.long, device=device)
        real = torch.full((rows,), length, dtype=torch.long, device=device)
        batch = Batch.padded(slots, starts, real)
        if self.out is None:
            vocab = self.model.config.vocab_size
            self.out = torch.empty(MAX_ROWS, 1, vocab, dtype=torch.float32, device=device)
        step = lambda: self.model(tokens, batch, self.cache)  # noqa: E731
        graph = record(step, self.out[:rows], self.pool, self.capture_stream)
        self.pool = graph.pool()
        return graph, tokens, slots, starts, real

    def size_for(self, start: int, n: int) -> int | None:
        """The captured length a chunk of n tokens from `start` replays, if any."""
        fits = [s for s in self.graphs if s >= n and start + s <= self.cache.max_len]
        return min(fits, default=None)

    def __call__(self, tokens: torch.Tensor, slot: int, start: int) -> torch.Tensor | None:
        """Logits (1, 1, vocab) after chunk tokens (1, n) of the sequence in `slot` from
        position `start` (the pools updated in place), or None where no captured length
        serves it (the caller runs it eagerly). The logits tensor is the graphs' own: read
        it before the next chunk."""
        n = tokens.shape[1]
        size = self.size_for(start, n)
        if size is None:
            return None
        graph, t_in, s_in, p_in, real = self.graphs[size]
        t_in[:, :n].copy_(tokens, non_blocking=True)
        t_in[:, n:].zero_()
        s_in.fill_(slot)
        p_in.fill_(start)
        real.fill_(n)
        graph.replay()
        return self.out[:1]

    def rows_for(self, n: int) -> tuple[int, int] | None:
        """(padded length, rows) of the graph that whole prompts of n tokens share, if any."""
        fits = [s for s in self.batched if s >= n]
        return (min(fits), self.batched[min(fits)][1].shape[0]) if fits else None

    def replay_prompts(
        self, tokens: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor
    ) -> torch.Tensor:
        """Logits (rows, 1, vocab) after whole prompts, one per row of tokens (rows, length)
        (a captured padded length with `rows` rows): row b's first lengths[b] tokens are the
        prompt of the sequence in slots[b]. Inputs on the device; the logits are the graphs'
        own buffer, as for __call__."""
        graph, t_in, s_in, _, real = self.batched[tokens.shape[1]]
        t_in.copy_(tokens, non_blocking=True)
        s_in.copy_(slots, non_blocking=True)
        real.copy_(lengths, non_blocking=True)
        graph.replay()  # p_in: every row starts at 0, as captured
        return self.out[: tokens.shape[0]]
