"""Triton kernels for the CUDA decode path.

`ssd_step`: the Mamba-2 decode state update and output in one pass over the state. The
PyTorch path gathers each row's state from the pool, multiplies by the decay, adds dt*x*B,
reduces against C and scatters it back: five passes over the largest tensor a decode step
touches (2 MB per sequence per layer for h-micro in fp32). Here each program owns a block of
one head's state rows in its pool slot, reads it once, writes it once, and emits y.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from granite_runtime.kernels.triton import pdl as triton_pdl
from granite_runtime.kernels.triton.options import DEFAULT, LaunchOptions
from granite_runtime.kernels.triton.pdl import wait_for_previous

# The state kernels read their own pools before waiting for the kernel before them (pdl.py):
# that kernel never writes them (LaunchOptions.early_state; off reads everything after it).


@triton.jit
def _ssd_step_kernel(
    x_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, state_ptr, slots_ptr, y_ptr, bias_ptr,
    dt_min, dt_max,
    sx_row, sdt_row, sb_row, sc_row, s_slot, s_head, s_p,
    H: tl.constexpr, P: tl.constexpr, N: tl.constexpr, HEADS_PER_GROUP: tl.constexpr,
    SOFTPLUS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    EARLY_STATE: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # Before the wait only what the kernel before this one (the conv) cannot be writing:
    # this row's state (only this kernel writes the state pool), the slots (copied in before
    # the step) and the head's parameters. The state is the bulk of this kernel's reads.
    if not EARLY_STATE:
        wait_for_previous(PDL)
    row = tl.program_id(0)
    head = tl.program_id(1)
    pb = tl.program_id(2)
    group = head // HEADS_PER_GROUP
    slot = tl.load(slots_ptr + row)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    p_ok, n_ok = p < P, n < N
    offs = slot * s_slot + head * s_head + p[:, None] * s_p + n[None, :]
    mask = p_ok[:, None] & n_ok[None, :]
    state = tl.load(state_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + head).to(tl.float32)
    d = tl.load(d_ptr + head).to(tl.float32)
    if SOFTPLUS:
        bias = tl.load(bias_ptr + head).to(tl.float32)
    if EARLY_STATE:
        wait_for_previous(PDL)
    dt = tl.load(dt_ptr + row * sdt_row + head).to(tl.float32)
    if SOFTPLUS:  # dt straight from in_proj: softplus(dt + dt_bias), clamped, as layers.py
        dt = dt + bias
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # F.softplus, threshold 20
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    decay = tl.exp(dt * a)
    x = tl.load(x_ptr + row * sx_row + head * P + p, mask=p_ok, other=0.0).to(tl.float32)
    bv = tl.load(b_ptr + row * sb_row + group * N + n, mask=n_ok, other=0.0).to(tl.float32)
    cv = tl.load(c_ptr + row * sc_row + group * N + n, mask=n_ok, other=0.0).to(tl.float32)
    state = state * decay + (dt * x)[:, None] * bv[None, :]
    tl.store(state_ptr + offs, state.to(state_ptr.dtype.element_ty), mask=mask)
    y = tl.sum(state * cv[None, :], axis=1) + d * x
    tl.store(y_ptr + (row * H + head) * P + p, y, mask=p_ok)


def _rows_dense(t: torch.Tensor) -> torch.Tensor:
    """t (B, ...) with each row's elements dense (a row of a wider tensor is fine)."""
    inner = t[0] if t.shape[0] else t
    return t if inner.is_contiguous() else t.contiguous()


def ssd_step(
    x, dt, A, Bm, Cm, D, state_pool, slots, block_p: int | None = None,
    dt_bias=None, dt_limit: tuple[float, float] = (0.0, float("inf")),
    launch: LaunchOptions = DEFAULT,
) -> torch.Tensor:  # fmt: skip
    """y (B, H, P) fp32 for one decode step; state_pool (S, H, P, N) is updated in place at
    `slots`. x (B, H, P), dt (B, H), A and D (H,), Bm/Cm (B, G, N), slots (B,) long. With
    `dt_bias`, dt is in_proj's raw output and the kernel applies softplus(dt + dt_bias) and
    `dt_limit` itself (three small kernels fewer per layer). x, dt, Bm and Cm may be rows of
    the wider projection and conv outputs: only each row needs to be dense."""
    b, h, p = x.shape
    g, n = Bm.shape[1], Bm.shape[2]
    assert state_pool.stride(-1) == 1
    x, dt, Bm, Cm = (_rows_dense(t) for t in (x, dt, Bm, Cm))
    y = torch.empty(b, h, p, dtype=torch.float32, device=x.device)
    # 8 rows of one head per program: best at batch 1 and 64 on an H200 (bench/NOTES.md).
    block_p = block_p or 8
    block_p = min(block_p, triton.next_power_of_2(p))
    grid = (b, h, triton.cdiv(p, block_p))
    _ssd_step_kernel[grid](
        x, dt, A, Bm, Cm, D, state_pool, slots, y, dt_bias if dt_bias is not None else D,
        float(dt_limit[0]), float(dt_limit[1]),
        x.stride(0), dt.stride(0), Bm.stride(0), Cm.stride(0),
        state_pool.stride(0), state_pool.stride(1), state_pool.stride(2),
        H=h, P=p, N=n, HEADS_PER_GROUP=h // g, SOFTPLUS=dt_bias is not None,
        BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(n), EARLY_STATE=launch.early_state,
        num_warps=4, **triton_pdl.options(x, launch.pdl),
    )  # fmt: skip
    return y


@triton.jit
def _conv_update_kernel(
    x_ptr,
    pool_ptr,
    w_ptr,
    b_ptr,
    slots_ptr,
    out_ptr,
    C,
    s_slot,
    s_chan,
    HAS_BIAS: tl.constexpr,
    K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EARLY_STATE: tl.constexpr,
    PDL: tl.constexpr,
):
    # Only x (in_proj's output) needs the kernel before this one. The window is this
    # kernel's own (nothing else reads or writes the conv pool during a step), so with
    # EARLY_STATE it is read, summed and shifted before the wait.
    if not EARLY_STATE:
        wait_for_previous(PDL)
    row = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = c < C
    slot = tl.load(slots_ptr + row)
    base = pool_ptr + slot * s_slot + c * s_chan
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for k in tl.static_range(K - 1):  # the K-1 past inputs, oldest first
        past = tl.load(base + k, mask=ok, other=0.0)
        acc += tl.load(w_ptr + c * K + k, mask=ok, other=0.0).to(tl.float32) * past.to(tl.float32)
        if k > 0:  # shift the window left by one, in place (column k-1 was read already)
            tl.store(base + (k - 1), past, mask=ok)
    w_new = tl.load(w_ptr + c * K + (K - 1), mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=ok, other=0.0).to(tl.float32)
    if EARLY_STATE:
        wait_for_previous(PDL)
    x = tl.load(x_ptr + row * C + c, mask=ok, other=0.0)
    tl.store(base + (K - 2), x.to(pool_ptr.dtype.element_ty), mask=ok)
    acc += w_new * x.to(tl.float32)
    tl.store(out_ptr + row * C + c, (acc * tl.sigmoid(acc)).to(out_ptr.dtype.element_ty), mask=ok)


def conv_update(x, conv_pool, weight, bias, slots, launch: LaunchOptions = DEFAULT) -> torch.Tensor:
    """silu(causal depthwise conv) of one new column per row, continuing each row's window in
    `conv_pool` (S, C, K-1) at `slots`, which is shifted in place. x (B, C), weight (C, K)."""
    b, c = x.shape
    k = weight.shape[1]
    assert conv_pool.stride(-1) == 1 and weight.is_contiguous()
    x = x.contiguous()
    out = torch.empty_like(x)
    block = 256
    _conv_update_kernel[(b, triton.cdiv(c, block))](
        x,
        conv_pool,
        weight,
        bias if bias is not None else weight,
        slots,
        out,
        c,
        conv_pool.stride(0),
        conv_pool.stride(1),
        HAS_BIAS=bias is not None,
        K=k,
        BLOCK_C=block,
        EARLY_STATE=launch.early_state,
        num_warps=4,
        **triton_pdl.options(x, launch.pdl),
    )
    return out


# ---- FP8 weights, few rows (decode) ----------------------------------------------------
# `torch._scaled_mm` quantizes the activations too and runs a GEMM tuned for large M; at
# decode's 1-16 rows it is slower than bf16 (bench/NOTES.md). This kernel reads the e4m3
# weight once, widens it to bf16 in registers and multiplies the bf16 activations as they
# are: the bytes halve and the activations keep their precision.
_FP8_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w)
    for bn, bk, w in [(16, 512, 4), (32, 256, 4), (16, 256, 4), (64, 256, 8), (32, 512, 8)]
]


@triton.autotune(configs=_FP8_CONFIGS, key=["N", "K"])
@triton.jit
def _fp8_matvec_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + offs_m[:, None] * K + offs_k[None, :],
            mask=(offs_m[:, None] < M) & (offs_k[None, :] < K),
            other=0.0,
        )
        w = tl.load(  # (BLOCK_N, BLOCK_K): each weight row read along its contiguous K
            w_ptr + offs_n[:, None] * K + offs_k[None, :],
            mask=(offs_n[:, None] < N) & (offs_k[None, :] < K),
            other=0.0,
        )
        acc += tl.dot(x, tl.trans(w.to(tl.bfloat16)))
    acc = acc * tl.load(scale_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :].to(tl.float32)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(tl.bfloat16), mask=mask)


FP8_MATVEC_MAX_ROWS = 16  # tl.dot's smallest M; more rows go to _scaled_mm


def fp8_matvec(x, weight_fp8, scale, bias) -> torch.Tensor:
    """x (M <= 16, K) bf16 @ (weight_fp8 (N, K) e4m3 * scale (N,))^T + bias -> (M, N) bf16."""
    m, k = x.shape
    n = weight_fp8.shape[0]
    x = x.to(torch.bfloat16).contiguous()
    y = torch.empty(m, n, dtype=torch.bfloat16, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _fp8_matvec_kernel[grid](
        x, weight_fp8, scale, bias if bias is not None else scale, y, m, n, k,
        HAS_BIAS=bias is not None, BLOCK_M=16,
    )  # fmt: skip
    return y


# ---- decode attention over the slot pool ------------------------------------------------
# One query token per row against its slot's keys 0..start, read where they lie in the KV
# pool: no gather of each row's KV (the static step used to copy it, and SDPA's math path
# then expanded it per query head), so a graphed step needs no more memory than an eager
# one and long contexts fit in graphs. One program per (row, key/value head) holds that
# head's group of query heads, padded to 16 rows for tl.dot, with an online softmax.
@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, slots_ptr, starts_ptr, o_ptr, new_k_ptr, new_v_ptr, scale,
    s_slot, s_head, s_pos, s_q, s_new,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr, PRECISION: tl.constexpr, WRITE_NEW: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    wait_for_previous(PDL)
    row = tl.program_id(0)
    kvh = tl.program_id(1)
    heads = tl.num_programs(1) * GROUP
    slot = tl.load(slots_ptr + row)
    start = tl.load(starts_ptr + row)
    length = start + 1  # the new key is at `start`
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    if WRITE_NEW:  # this head's new key and value into the pool first (no scatter kernels)
        new = row * s_new + kvh * D + offs_d
        at = slot * s_slot + kvh * s_head + start * s_pos + offs_d
        tl.store(k_ptr + at, tl.load(new_k_ptr + new, mask=offs_d < D), mask=offs_d < D)
        tl.store(v_ptr + at, tl.load(new_v_ptr + new, mask=offs_d < D), mask=offs_d < D)
        tl.debug_barrier()  # the writes visible to every thread of the program below
    q_heads = kvh * GROUP + offs_g
    g_mask = offs_g < GROUP
    d_mask = offs_d < D
    q = tl.load(
        q_ptr + row * s_q + q_heads[:, None] * D + offs_d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
    )
    base = slot * s_slot + kvh * s_head
    m = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    for l0 in range(0, length, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        l_mask = offs_l < length
        kv_off = base + offs_l[:, None] * s_pos + offs_d[None, :]
        kv_mask = l_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + kv_off, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION) * scale
        s = tl.where(l_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        correction = tl.exp(m - m_new)
        total = total * correction + tl.sum(p, axis=1)
        v = tl.load(v_ptr + kv_off, mask=kv_mask, other=0.0)
        pv = tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION)
        acc = acc * correction[:, None] + pv
        m = m_new
    out = acc / total[:, None]
    tl.store(
        o_ptr + (row * heads + q_heads[:, None]) * D + offs_d[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=g_mask[:, None] & d_mask[None, :],
    )


def decode_attention(
    q, k_pool, v_pool, slots, starts, scale: float, new_k=None, new_v=None,
    launch: LaunchOptions = DEFAULT,
) -> torch.Tensor:  # fmt: skip
    """q (B, H, D) one token per row; k_pool/v_pool (slots, KVH, max_len, D) one layer's
    pool. Each row's new key/value must be at `starts` in the pool, or be given as new_k and
    new_v (B, KVH, D; rows of one wider tensor are fine), which the kernel writes there
    first. Returns (B, H, D)."""
    b, h, d = q.shape
    kvh = k_pool.shape[1]
    q = q if q[0].is_contiguous() else q.contiguous()
    out = torch.empty(b, h, d, dtype=q.dtype, device=q.device)
    group = h // kvh
    write = new_k is not None
    if write:
        assert new_k[0].is_contiguous() and new_v[0].is_contiguous()
        assert new_k.stride(0) == new_v.stride(0) and new_k.dtype == k_pool.dtype
    _decode_attention_kernel[(b, kvh)](
        q, k_pool, v_pool, slots, starts, out, new_k if write else q, new_v if write else q,
        scale, k_pool.stride(0), k_pool.stride(1), k_pool.stride(2), q.stride(0),
        new_k.stride(0) if write else 0,
        GROUP=group, D=d, BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_L=64,
        # fp32 stays fp32 (the CPU reference's precision); tf32 would be 1e-3 off
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", WRITE_NEW=write,
        **triton_pdl.options(q, launch.pdl),
    )  # fmt: skip
    return out
