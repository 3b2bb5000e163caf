"""Grouped-query attention over the slot pool of the hybrid cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from granite_runtime.engine.batch import Batch
from granite_runtime.engine.cache import HybridCache
from granite_runtime.kernels.choice import PYTORCH, KernelChoice
from granite_runtime.layers.linear import one_row_fused
from granite_runtime.spec.config import GraniteConfig


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    kernels: KernelChoice = PYTORCH

    def __init__(self, config: GraniteConfig, layer: int):
        super().__init__()
        hd, bias = config.head_dim, config.attention_bias
        self.heads, self.kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, hd
        self.scale = config.attention_multiplier
        self.q_proj = nn.Linear(config.hidden_size, self.heads * hd, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(self.heads * hd, config.hidden_size, bias=bias)
        self.rope_theta = config.rope_theta if config.use_rope else None
        self.layer = layer

    def _rope(self, q, k, positions):
        inv_freq = 1.0 / (
            self.rope_theta
            ** (
                torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=q.device)
                / self.head_dim
            )
        )
        freqs = positions.float().unsqueeze(-1) * inv_freq  # (B, L, D/2)
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # (B, 1, L, D)
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin

    def forward(self, x: torch.Tensor, batch: Batch, cache: HybridCache) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        out = batch.each(lambda q, k, v, part: self._attend(q, k, v, part, cache), q, k, v)
        return self.o_proj(out)

    def _attend(self, q, k, v, batch: Batch, cache: HybridCache) -> torch.Tensor:
        """(B, L, heads * head_dim) attention outputs of one plain batch's projections,
        whose keys and values join the slots' rows in the pool."""
        b, length, _ = q.shape
        q = q.view(b, length, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        positions = batch.starts[:, None] + torch.arange(length, device=q.device)
        if self.rope_theta is not None:
            q, k = self._rope(q, k, positions)
        index = cache.attn_index[self.layer]
        kc, vc = cache.k[index], cache.v[index]
        if batch.static and length > 1:
            return self._padded_chunk(q, k, v, kc, vc, batch)
        # one-token rows on Triton (a graphed step, or a packed step's decode part) write
        # their key and value and attend in place: no copy of the rows' keys
        if batch.static or (length == 1 and self.kernels.triton):
            return self._static_decode(q, k, v, kc, vc, batch)
        total = max(batch.starts_list) + length
        if b == 1:  # views, no gather: the common prefill and batch-1 decode case
            slot, start = batch.slots_list[0], batch.starts_list[0]
            kc[slot, :, start : start + length] = k[0]
            vc[slot, :, start : start + length] = v[0]
            keys, values = kc[slot, :, :total].unsqueeze(0), vc[slot, :, :total].unsqueeze(0)
        else:
            rows = batch.slots[:, None].expand(b, length)
            kc[rows, :, positions] = k.transpose(1, 2).to(kc.dtype)
            vc[rows, :, positions] = v.transpose(1, 2).to(vc.dtype)
            keys, values = kc[batch.slots, :, :total], vc[batch.slots, :, :total]
        mask = None  # one query per row attending to every written key needs no mask
        if b == 1 and length > 1 and q.is_cuda:
            # a prompt chunk after `start` earlier tokens: causal aligned to the last key,
            # which SDPA runs as flash attention with no (length x total) mask in memory
            mask = causal_lower_right(length, total)
        elif length > 1 or b > 1:
            key_pos = torch.arange(total, device=q.device)
            mask = key_pos.view(1, 1, 1, total) <= positions.view(b, 1, length, 1)
        out = F.scaled_dot_product_attention(
            q,
            keys.to(q.dtype),
            values.to(q.dtype),
            attn_mask=mask,
            scale=self.scale,
            enable_gqa=True,
        )
        return out.transpose(1, 2).reshape(b, length, -1)

    def fused_input(self, x: torch.Tensor, cache: HybridCache) -> list[torch.Tensor] | None:
        """[q, k, v] weights where one token's norm and q/k/v products run as one kernel
        (fused_linear, model.granite.DecoderLayer) and `from_projection` follows: no RoPE
        (Granite 4.0's hybrids use none), a KV pool in the model dtype; else None."""
        linears = (self.q_proj, self.k_proj, self.v_proj, self.o_proj)
        k = self.kernels
        if not k.fused_attention or self.rope_theta is not None or cache.k.dtype != x.dtype:
            return None
        if not (k.triton and one_row_fused(k, x, *linears)):
            return None
        return [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]

    def from_projection(self, qkv: torch.Tensor, batch: Batch, cache: HybridCache):
        """Attention for one token from its [q | k | v] row: the decode kernel writes the new
        key and value into the pool and attends (no scatter kernels), then the output
        product; 3 kernels with the q/k/v product, where the separate path runs 10."""
        nq, nk, hd = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.head_dim
        qkv = qkv.view(1, -1)
        q = qkv[:, :nq].view(1, self.heads, hd)
        k = qkv[:, nq : nq + nk].view(1, self.kv_heads, hd)
        v = qkv[:, nq + nk :].view(1, self.kv_heads, hd)
        index = cache.attn_index[self.layer]
        ops, launch = self.kernels.ops, self.kernels.launch
        out = ops.decode.decode_attention(
            q, cache.k[index], cache.v[index], batch.slots, batch.starts, self.scale, k, v,
            launch=launch,
        )  # fmt: skip
        return ops.fused_linear.linear(out.view(1, 1, nq), self.o_proj.weight, launch=launch)

    def _padded_chunk(self, q, k, v, kc, vc, batch: Batch) -> torch.Tensor:
        """A padded chunk (`Batch.padded`, a chunk graph): every key is written before any
        query attends, and each query reads the slot's keys up to its own position, so the
        real tokens never see the padding's (written past them, where later tokens
        overwrite them). As one-token rows of the same slot, each at its own position, or
        with `kernels.chunk_attention` as query blocks (kernels/triton/chunk_attention.py)."""
        b, _, length, _ = q.shape
        positions = batch.starts[:, None] + torch.arange(length, device=q.device)
        rows = Batch.graphable(batch.slots.repeat_interleave(length), positions.reshape(-1))

        def as_rows(t: torch.Tensor) -> torch.Tensor:  # (b, h, L, d) -> (b * L, h, 1, d)
            return t.transpose(1, 2).reshape(b * length, t.shape[1], 1, t.shape[-1])

        if not self.kernels.chunk_attention:
            out = self._static_decode(as_rows(q), as_rows(k), as_rows(v), kc, vc, rows)
            return out.reshape(b, length, -1)
        kc[rows.slots, :, rows.starts] = as_rows(k)[:, :, 0].to(kc.dtype)
        vc[rows.slots, :, rows.starts] = as_rows(v)[:, :, 0].to(vc.dtype)
        out = self.kernels.ops.chunk_attention.chunk_attention(
            q.transpose(1, 2), kc, vc, batch.slots, batch.starts, self.scale
        )
        return out.reshape(b, length, -1)

    def _static_decode(self, q, k, v, kc, vc, batch: Batch) -> torch.Tensor:
        """One token per row, every shape fixed: scatter the new key/value to (slot, start),
        then attend over the slot's whole row, masked past the start."""
        b = q.shape[0]
        kc[batch.slots, :, batch.starts] = k[:, :, 0].to(kc.dtype)
        vc[batch.slots, :, batch.starts] = v[:, :, 0].to(vc.dtype)
        if self.kernels.triton:  # reads each slot's keys in place (kernels/triton/decode.py)
            out = self.kernels.ops.decode.decode_attention(
                q[:, :, 0], kc, vc, batch.slots, batch.starts, self.scale,
                launch=self.kernels.launch,
            )  # fmt: skip
            return out.reshape(b, 1, -1)
        keys, values = kc[batch.slots], vc[batch.slots]  # (B, KVH, max_len, D)
        key_pos = torch.arange(kc.shape[2], device=q.device)
        mask = key_pos.view(1, 1, 1, -1) <= batch.starts.view(b, 1, 1, 1)
        out = F.scaled_dot_product_attention(
            q,
            keys.to(q.dtype),
            values.to(q.dtype),
            attn_mask=mask,
            scale=self.scale,
            enable_gqa=True,
        )
        return out.transpose(1, 2).reshape(b, 1, -1)
