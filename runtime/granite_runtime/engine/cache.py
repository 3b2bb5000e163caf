"""Fixed pools for per-sequence state: Mamba conv/SSM state slots and a slot-based KV cache.

Allocated once, at start-up, from sizes the memory model computed; a sequence owns one slot
for its lifetime. Slot-based (each slot reserves max_len tokens of KV) is exact to size and
simple; Granite hybrids have only a few attention layers, so KV is the small part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from granite_runtime.spec.config import GraniteConfig


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


class HybridCache:
    def __init__(
        self,
        config: GraniteConfig,
        num_slots: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str,
        state_dtype: torch.dtype | None = None,
    ):
        self.num_slots, self.max_len = num_slots, max_len
        state_dtype = state_dtype or dtype
        self.mamba_index = {layer: i for i, layer in enumerate(config.mamba_layers)}
        self.attn_index = {layer: i for i, layer in enumerate(config.attention_layers)}
        m, a = len(self.mamba_index), len(self.attn_index)
        # Only d_conv - 1 past columns are needed to continue the convolution.
        self.conv = torch.zeros(
            m,
            num_slots,
            config.mamba_conv_dim,
            config.mamba_conv - 1,
            dtype=state_dtype,
            device=device,
        )
        self.ssm = torch.zeros(
            m,
            num_slots,
            config.mamba_heads,
            config.mamba_head_dim,
            config.mamba_state,
            dtype=state_dtype,
            device=device,
        )
        kv_shape = (a, num_slots, config.num_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(kv_shape, dtype=dtype, device=device)
        self.v = torch.zeros(kv_shape, dtype=dtype, device=device)

    def reset(self, slot: int) -> None:
        """A new sequence starts from zero state; its KV rows are masked until written."""
        self.conv[:, slot].zero_()
        self.ssm[:, slot].zero_()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv, self.ssm, self.k, self.v))
