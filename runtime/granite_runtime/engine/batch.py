"""The rows of one forward call and where each row's state lives in the pools."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    """Rows of one forward call: row b owns `slots[b]` and starts at position `starts[b]`.

    A plain batch has the same number of tokens (L) in every row: a prefill chunk of one
    sequence, or one token for each decoding sequence. A packed batch (`Batch.packed`) puts
    several such batches on one token axis, tokens (1, T), so that one step's decode tokens
    and several prompts' chunks share each weight read: the token-wise layers (norms,
    projections, MLPs, experts) run once over all T tokens and only the mixers' sequence
    parts (convolution, scan, attention) run part by part (`each`).
    """

    slots: torch.Tensor  # (B,) long
    starts: torch.Tensor  # (B,) long
    slots_list: list[int]
    starts_list: list[int]
    # Static: one token per row, slots and positions only as tensors, so the step has the
    # same shapes and no host reads whatever the values: what a CUDA graph can replay.
    static: bool = False
    parts: list[Part] = field(default_factory=list)  # packed: the plain batches, in order
    last: torch.Tensor | None = None  # packed: each row's last token on the token axis
    # A padded chunk (`Batch.padded`): each row's first `lengths[b]` tokens are the prompt's,
    # the rest padding that must leave no trace in the row's state.
    lengths: torch.Tensor | None = None

    @property
    def rows(self) -> slice | torch.Tensor:
        """Index of the rows' slots: a slice (a view, no gather) when they are consecutive."""
        if self.static:
            return self.slots
        first = self.slots_list[0]
        if self.slots_list == list(range(first, first + len(self.slots_list))):
            return slice(first, first + len(self.slots_list))
        return self.slots

    def each(self, fn: Callable[..., torch.Tensor], *xs: torch.Tensor) -> torch.Tensor:
        """fn(*xs, batch) for a plain batch. For a packed one, fn(*part's xs, part's batch)
        for each part, with each x (1, T, ...) viewed as that part's (rows, length, ...),
        and the outputs joined back on the token axis."""
        if not self.parts:
            return fn(*xs, self)
        outs = []
        for part in self.parts:
            views = [part.view(x) for x in xs]
            outs.append(fn(*views, part.batch).reshape(1, part.tokens, -1))
        return torch.cat(outs, dim=1)

    def drop_padding(self, dt: torch.Tensor) -> torch.Tensor:
        """The scan's step sizes (B, L, H) with padding's set to zero: a zero step neither
        decays the state nor adds to it, so the state after the chunk is the prompt's."""
        if self.lengths is None:
            return dt
        real = torch.arange(dt.shape[1], device=dt.device) < self.lengths[:, None]
        return dt * real[..., None]

    def window_after(self, past: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, C, W): each row's last W inputs once chunk x (B, L, C) follows window `past`
        (B, C, W), counting only the row's real tokens: a causal convolution's next window."""
        width = past.shape[-1]
        if self.lengths is None:
            return torch.cat([past.to(x.dtype), x.transpose(1, 2)[..., -width:]], -1)[..., -width:]
        # the PyTorch path's; on CUDA, kernels/triton/fused.py conv_window_after moves it
        full = torch.cat([past.to(x.dtype), x.transpose(1, 2)], dim=-1)
        ends = self.lengths[:, None] + torch.arange(width, device=x.device)  # (B, W)
        return full.gather(-1, ends[:, None, :].expand(-1, full.shape[1], -1))

    def last_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, 1, ...): each row's last position of x (B, L, ...) or (1, T, ...) packed."""
        if self.lengths is not None:  # computed here, so a graph replays it with new lengths
            rows = torch.arange(x.shape[0], device=x.device)
            return x[rows, self.lengths - 1].unsqueeze(1)
        if self.last is None:
            return x[:, -1:]
        return x[0, self.last].unsqueeze(1)

    @classmethod
    def graphable(cls, slots: torch.Tensor, starts: torch.Tensor) -> Batch:
        """A decode batch over caller-owned tensors (a CUDA graph's static inputs)."""
        return cls(slots, starts, [], [], static=True)

    @classmethod
    def padded(cls, slots: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> Batch:
        """One prompt chunk per row over caller-owned tensors (a chunk graph's static inputs,
        engine/chunk_graphs.py): row b's first lengths[b] tokens are real, and its logits
        come from the last of them. Every shape is the padded one and no value is read back
        to the host."""
        return cls(slots, starts, [], [], static=True, lengths=lengths)

    @classmethod
    def make(cls, slots: list[int], starts: list[int], device: torch.device | str) -> Batch:
        return cls(
            torch.tensor(slots, dtype=torch.long, device=device),
            torch.tensor(starts, dtype=torch.long, device=device),
            list(slots),
            list(starts),
        )

    @classmethod
    def packed(
        cls, slots: list[int], starts: list[int], lengths: list[int], device: torch.device | str
    ) -> Batch:
        """One token axis over rows of `lengths` tokens each, in order: consecutive one-token
        rows (decode tokens, a prompt's one-token remainder) run as one part, each longer row
        as a part of its own. Logits come out one per row, in this order."""
        parts, begin, row = [], 0, 0
        while row < len(lengths):
            end = row + 1
            while lengths[row] == 1 and end < len(lengths) and lengths[end] == 1:
                end += 1
            plain = cls.make(slots[row:end], starts[row:end], device)
            parts.append(Part(begin, end - row, lengths[row], plain))
            begin, row = begin + parts[-1].tokens, end
        whole = cls.make(slots, starts, device)
        whole.parts = parts
        ends = torch.tensor(lengths, dtype=torch.long).cumsum(0) - 1
        whole.last = ends.to(device)
        return whole


@dataclass(frozen=True)
class Part:
    """One plain batch within a packed one: `rows` x `length` tokens from `begin`."""

    begin: int
    rows: int
    length: int
    batch: Batch

    @property
    def tokens(self) -> int:
        return self.rows * self.length

    def view(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.begin : self.begin + self.tokens].reshape(
            self.rows, self.length, *x.shape[2:]
        )
