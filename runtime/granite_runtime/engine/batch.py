"""The rows of one forward call and where each row's state lives in the pools."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """Rows of one forward call: row b owns `slots[b]` and starts at position `starts[b]`.

    Every row carries the same number of tokens (L): a prefill chunk of one sequence, or one
    token for each decoding sequence.
    """

    slots: torch.Tensor  # (B,) long
    starts: torch.Tensor  # (B,) long
    slots_list: list[int]
    starts_list: list[int]
    # Static: one token per row, slots and positions only as tensors, so the step has the
    # same shapes and no host reads whatever the values: what a CUDA graph can replay.
    static: bool = False

    @property
    def rows(self) -> slice | torch.Tensor:
        """Index of the rows' slots: a slice (a view, no gather) when they are consecutive."""
        if self.static:
            return self.slots
        first = self.slots_list[0]
        if self.slots_list == list(range(first, first + len(self.slots_list))):
            return slice(first, first + len(self.slots_list))
        return self.slots

    @classmethod
    def graphable(cls, slots: torch.Tensor, starts: torch.Tensor) -> Batch:
        """A decode batch over caller-owned tensors (a CUDA graph's static inputs)."""
        return cls(slots, starts, [], [], static=True)

    @classmethod
    def make(cls, slots: list[int], starts: list[int], device: torch.device | str) -> Batch:
        return cls(
            torch.tensor(slots, dtype=torch.long, device=device),
            torch.tensor(starts, dtype=torch.long, device=device),
            list(slots),
            list(starts),
        )
