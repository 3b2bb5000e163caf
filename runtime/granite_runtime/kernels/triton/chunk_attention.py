"""Causal attention for prompt chunks over the slot pool, graph-safe: `chunk_attention`.

A chunk graph has fixed shapes but each replay its own slot and start, so its attention
cannot slice the slot's keys to `start + n` as the eager chunk's flash attention does. It
used to run the chunk as one-token rows through the decode kernel (decode.py), row p
reading the slot's keys 0..p: a chunk of n tokens from `start` reads about n x (start + n/2)
keys per KV head, which grows with the position and, past what L2 holds, comes from HBM
(bench/NOTES.md). Here one program holds a block of BLOCK_M queries of one row, for every
query head of one KV head (BLOCK_M x GROUP rows of one tl.dot), and reads each key block
up to its last query once, with an online softmax: n / BLOCK_M times fewer reads.

The slot and start are read on the device and the loop bound follows them, so one
compiled kernel and one captured grid serve every replay.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _chunk_attention_kernel(
    q_ptr, k_ptr, v_ptr, slots_ptr, starts_ptr, o_ptr, scale, L,
    s_slot, s_head, s_pos, sq_row, sq_tok, sq_head, so_row, so_tok, so_head,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    block, row, kvh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    slot = tl.load(slots_ptr + row)
    start = tl.load(starts_ptr + row)
    r = tl.arange(0, BLOCK_M * BLOCK_G)  # (query, head of the group), heads fastest
    token = block * BLOCK_M + r // BLOCK_G
    head = kvh * GROUP + r % BLOCK_G
    r_ok = (token < L) & (r % BLOCK_G < GROUP)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    q_off = row * sq_row + token[:, None] * sq_tok + head[:, None] * sq_head + d[None, :]
    q = tl.load(q_ptr + q_off, mask=r_ok[:, None] & d_ok[None, :], other=0.0)
    position = start + token
    end = start + tl.minimum((block + 1) * BLOCK_M, L)  # keys 0..end-1 are this block's
    base = slot * s_slot + kvh * s_head
    m = tl.full((BLOCK_M * BLOCK_G,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_M * BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_M * BLOCK_G, BLOCK_D), tl.float32)
    for n0 in range(0, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        kv_off = base + n[:, None] * s_pos + d[None, :]
        kv_mask = (n < end)[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + kv_off, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION) * scale
        # causal: key 0 is always seen, so no row's softmax is empty
        s = tl.where((n[None, :] <= position[:, None]) & (n < end)[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        correction = tl.exp(m - m_new)
        total = total * correction + tl.sum(p, axis=1)
        v = tl.load(v_ptr + kv_off, mask=kv_mask, other=0.0)
        acc = acc * correction[:, None] + tl.dot(
            p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION
        )
        m = m_new
    out = acc / total[:, None]
    o_off = row * so_row + token[:, None] * so_tok + head[:, None] * so_head + d[None, :]
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=r_ok[:, None] & d_ok[None, :])


def chunk_attention(
    q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor,
    starts: torch.Tensor, scale: float,
) -> torch.Tensor:  # fmt: skip
    """Outputs (B, L, H, D) of queries q (B, L, H, D; any strides with D dense): row b's
    token i is at position starts[b] + i of the sequence in slots[b] and attends to its
    keys 0..starts[b] + i, which must already be in k_pool/v_pool (slots, KVH, max_len, D),
    one layer's pool. slots and starts (B,) long, on the device."""
    b, length, h, d = q.shape
    kvh = k_pool.shape[1]
    assert q.stride(-1) == 1 and k_pool.stride(-1) == 1 and v_pool.stride() == k_pool.stride()
    group = h // kvh
    out = torch.empty(b, length, h, d, dtype=q.dtype, device=q.device)
    block_g = triton.next_power_of_2(group)
    block_m = max(1, 64 // block_g)  # 64 rows of one tl.dot: 16 queries of 4 heads, 8 of 8
    grid = (triton.cdiv(length, block_m), b, kvh)
    _chunk_attention_kernel[grid](
        q, k_pool, v_pool, slots, starts, out, scale, length,
        k_pool.stride(0), k_pool.stride(1), k_pool.stride(2),
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        GROUP=group, BLOCK_G=block_g, D=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
        BLOCK_M=block_m, BLOCK_N=64,
        # fp32 stays fp32 (the CPU reference's precision), as in the decode kernel
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=4,
    )  # fmt: skip
    return out
