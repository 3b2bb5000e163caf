"""Prompts prefilled beside the decode steps: chunk graphs on a low-priority CUDA stream.

Inside a step, a 2,048-token chunk held every running stream for ~30 ms where its decode
step alone takes 3-6 ms on an H100 (bench/NOTES.md). Here a prompt's chunks are queued on a
stream of their own and the decode steps run on a high-priority one: measured by
bench/prefill_overlap.py on an H100, an h-micro decode step beside 2,048-token chunks takes
~2.3x its idle time (1.5x beside 1,024-token chunks) while the chunks keep ~60% of their
rate (~50%), where inside a step a 2,048-token chunk adds its whole ~34 ms to it. Those are
round 18's figures: once prefill's small kernels were fused (round 21), the chunks left the
decode stream fewer idle SMs, and a served stream's ITL p99 beside them rose to 2.9-6.1x.

Ordering between the two streams:
- a prompt is queued after the decode stream's work so far (its slot's reset, and whatever
  the slot's last holder ran there);
- the engine takes a prompt's first token only once its event has completed, and only then
  decodes it on the decode stream, so the decode stream reads a finished state;
- a sequence in flight is never finished (cancelled) until it lands, so its slot cannot be
  reset and reused while the prefill stream still writes it.
The chunk graphs have a memory pool and a capture stream of their own (chunk_graphs.py): they
run at the same time as decode graphs.
"""

from __future__ import annotations

from collections import deque

import torch

from granite_runtime.engine.chunk_graphs import GraphedChunks
from granite_runtime.engine.prefill_share import PrefillShare, prefill_stream
from granite_runtime.engine.sequence import Sequence


def share_replays(seqs: list[Sequence], rows_for) -> list[list[Sequence]]:
    """The replays that queue `seqs`: prompts of one shared graph's padded length
    (`rows_for(n)`: (padded length, rows), or None where none is shared), `rows` to a
    replay while they last, in order of the group's last prompt; the others, and what is
    left of a group, one to a replay."""
    groups, sharing = [], {}
    for seq in seqs:
        shared = rows_for(len(seq.prompt_ids))
        if shared is None:
            groups.append([seq])
            continue
        group = sharing.setdefault(shared[0], [])
        group.append(seq)
        if len(group) == shared[1]:
            groups.append(sharing.pop(shared[0]))
    groups.extend([seq] for group in sharing.values() for seq in group)
    return groups


def within_room(seqs: list[Sequence], queued: int, limit: int) -> list[Sequence]:
    """The prompts of `seqs`, in order, that are queued while fewer than `limit` prompt
    tokens are (`queued` already): the last one taken may pass the limit, so a prompt
    longer than the room still goes once the queue has drained."""
    taken = []
    for seq in seqs:
        if queued >= limit:
            break
        taken.append(seq)
        queued += len(seq.prompt_ids)
    return taken


class PrefillStream:
    def __init__(
        self, graphs: GraphedChunks, prefill_chunk: int, device: torch.device,
        share: PrefillShare = PrefillShare(),
    ):  # fmt: skip
        """`share`: the prefill stream's green context, if any, and how many chunks it
        queues ahead (engine/prefill_share.py)."""
        _, high = torch.cuda.Stream.priority_range()
        self.stream, self._context = prefill_stream(device, share.green_sms)
        self.decode = torch.cuda.Stream(device, priority=high)  # the engine's steps run here
        self.graphs, self.chunk = graphs, prefill_chunk
        self.limit = share.queued_chunks * prefill_chunk
        self.in_flight: deque[tuple[list[Sequence], torch.Tensor, torch.cuda.Event]] = deque()
        self.queued = 0
        self._fits: dict[int, bool] = {}  # prompt length -> every chunk has a graph

    def _pieces(self, n: int) -> list[tuple[int, int]]:
        return [(a, min(self.chunk, n - a)) for a in range(0, n, self.chunk)]

    def fits(self, seq: Sequence) -> bool:
        """Whether every chunk of the prompt replays a graph (else it is prefilled in the
        decode steps, eagerly). Asked of every waiting prompt every step: kept by length."""
        n = len(seq.prompt_ids)
        if n not in self._fits:
            pieces = self._pieces(n)
            self._fits[n] = all(self.graphs.size_for(a, k) is not None for a, k in pieces)
        return self._fits[n]

    def holds(self, seq: Sequence) -> bool:
        return any(s is seq for group, _, _ in self.in_flight for s in group)

    def enqueue(self, seqs: list[Sequence]) -> list[Sequence]:
        """Queue the prompts' chunks, in order, as long as there is room; the ones queued
        are returned. Prompts that share a batched graph's padded length go through it
        together, a graph's rows at a time; the rest go one by one. Each replay's first
        tokens' logits land with an event."""
        taken = within_room(seqs, self.queued, self.limit)
        if not taken:
            return []
        self.stream.wait_stream(self.decode)
        with torch.cuda.stream(self.stream):
            for group in share_replays(taken, self.graphs.rows_for):
                logits = self._together(group) if len(group) > 1 else self._alone(group[0])
                landed = torch.cuda.Event()
                landed.record(self.stream)
                logits.record_stream(self.decode)  # sampled on the decode stream
                for seq in group:
                    seq.prefilled = len(seq.prompt_ids)
                self.in_flight.append((group, logits, landed))
        self.queued += sum(len(seq.prompt_ids) for seq in taken)
        return taken

    def _alone(self, seq: Sequence) -> torch.Tensor:
        prompt = seq.prompt_ids
        tokens = torch.tensor(prompt, dtype=torch.long).pin_memory()
        tokens = tokens.to(self.stream.device, non_blocking=True)
        for a, n in self._pieces(len(prompt)):
            out = self.graphs(tokens[None, a : a + n], seq.slot, a)
        return out[:, -1].clone()  # the graphs share their logits buffer

    def _together(self, group: list[Sequence]) -> torch.Tensor:
        size, _ = self.graphs.rows_for(len(group[0].prompt_ids))
        tokens = torch.zeros(len(group), size, dtype=torch.long)
        for row, seq in enumerate(group):
            tokens[row, : len(seq.prompt_ids)] = torch.tensor(seq.prompt_ids)
        lengths = torch.tensor([len(seq.prompt_ids) for seq in group])
        slots = torch.tensor([seq.slot for seq in group])
        on_device = [t.pin_memory().to(self.stream.device, non_blocking=True)
                     for t in (tokens, lengths, slots)]  # fmt: skip
        return self.graphs.replay_prompts(*on_device)[:, -1].clone()

    def landed(self) -> list[tuple[Sequence, torch.Tensor]]:
        """The prompts whose prefill has finished, in the order they were queued."""
        done = []
        while self.in_flight and self.in_flight[0][2].query():
            group, logits, _ = self.in_flight.popleft()
            for row, seq in enumerate(group):
                self.queued -= len(seq.prompt_ids)
                done.append((seq, logits[row : row + 1]))
        return done

    def wait(self) -> None:
        """Block (the GIL released) until the first prompt in flight lands."""
        if self.in_flight:
            self.in_flight[0][2].synchronize()

    def drain(self) -> None:
        """Wait for everything queued and forget it (the engine is failing its requests)."""
        self.stream.synchronize()
        self.in_flight.clear()
        self.queued = 0
