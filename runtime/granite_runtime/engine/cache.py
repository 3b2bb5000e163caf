"""Fixed pools for per-sequence state: Mamba conv/SSM state slots and a slot-based KV cache.

Allocated once, at start-up, from sizes the memory model computed; a sequence owns one slot
for its lifetime. Slot-based (each slot reserves max_len tokens of KV) is exact to size and
simple; Granite hybrids have only a few attention layers, so KV is the small part.
"""

from __future__ import annotations

import torch

from granite_runtime.spec.config import GraniteConfig


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
