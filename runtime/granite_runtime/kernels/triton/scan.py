"""Mamba-2's chunked scan (SSD) for prefill on CUDA, in three Triton kernels.

The same algorithm as `ssd.chunked_scan` (the reference these kernels are tested against),
without materialising its (heads x chunks x Q x Q) score and decay tensors: at 32k tokens
those are gigabytes per layer, written and read back by a dozen PyTorch ops. Here:

1. `_chunk_state_kernel`: each chunk's own contribution to the state at its end,
   sum_l x_l (dt_l exp(cum_end - cum_l)) B_l, one (P x N) matrix product per (chunk, head);
2. `_state_passing_kernel`: the short recurrence over chunk boundaries, which turns those
   into the state entering each chunk (in the model's dtype, as the scan's products take
   it: half the bytes for bf16) and the final state (fp32, into the pool);
3. `_chunk_scan_kernel`: each output row, from the state entering its chunk (C.state) plus
   the causal, decay-weighted mixing inside the chunk (C.B computed once per chunk and
   group beforehand, as it is shared by the group's heads).

Before them, `chunk_dt` lays out dt (softplus applied, padding zeroed) and the cumulative
sum of dt*A within each chunk, in one small kernel.
Products run on tensor cores in the model's dtype with fp32 accumulation, as mamba_ssm's
kernels do; fp32 inputs use exact (IEEE) products so the result matches the reference to
~1e-5. Grid axis 0 walks the programs that share one chunk's B and C, so those stay in L2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from granite_runtime.kernels.triton.autotune import autotune


@triton.jit
def _chunk_state_kernel(
    x_ptr, b_ptr, dt_ptr, cum_ptr, states_ptr,
    L, Q, C,
    sx_b, sx_l, sx_h, sb_b, sb_l, sb_g,
    P: tl.constexpr, N: tl.constexpr, HEADS_PER_GROUP: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    head, chunk, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    heads = tl.num_programs(0)
    group = head // HEADS_PER_GROUP
    p, n = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
    row = (batch * heads + head) * C + chunk  # index into the (B, H, C, Q) cum and dt
    cum_end = tl.load(cum_ptr + row * Q + Q - 1)
    x_base = x_ptr + batch * sx_b + head * sx_h
    b_base = b_ptr + batch * sb_b + group * sb_g
    acc = tl.zeros((BLOCK_P, BLOCK_N), tl.float32)
    for l0 in range(0, Q, BLOCK_L):
        q = l0 + tl.arange(0, BLOCK_L)
        t = chunk * Q + q
        ok = (q < Q) & (t < L)
        xt = tl.load(
            x_base + t[None, :] * sx_l + p[:, None], mask=ok[None, :] & (p[:, None] < P), other=0.0
        )  # (P, L)
        bm = tl.load(
            b_base + t[:, None] * sb_l + n[None, :], mask=ok[:, None] & (n[None, :] < N), other=0.0
        )  # (L, N)
        w = tl.load(dt_ptr + row * Q + q, mask=ok, other=0.0) * tl.exp(
            cum_end - tl.load(cum_ptr + row * Q + q, mask=ok, other=0.0)
        )
        acc += tl.dot((xt * w[None, :]).to(bm.dtype), bm, input_precision=PRECISION)
    out = states_ptr + (((batch * C + chunk) * heads + head) * P + p[:, None]) * N + n[None, :]
    tl.store(out, acc, mask=(p[:, None] < P) & (n[None, :] < N))


@triton.jit
def _state_passing_kernel(
    states_ptr, entering_ptr, cum_ptr, init_ptr, final_ptr, slots_ptr, Q, C,
    si_b, si_h, sf_b, sf_h,
    PN: tl.constexpr, N: tl.constexpr, HAS_INIT: tl.constexpr, SLOTS: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    block, head, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    heads = tl.num_programs(1)
    k = block * BLOCK + tl.arange(0, BLOCK)  # flat (p, n) index; the pool rows are (P, N)
    ok = k < PN
    row = tl.load(slots_ptr + batch) if SLOTS else batch  # of init and final
    if HAS_INIT:
        carry = tl.load(init_ptr + row * si_b + head * si_h + k, mask=ok, other=0.0)
        carry = carry.to(tl.float32)
    else:
        carry = tl.zeros((BLOCK,), tl.float32)
    # A chain of C dependent steps per program: the next chunk's state is loaded before
    # this one's is used, so the load's latency overlaps the arithmetic.
    stride = heads * PN
    offset = (batch * C * heads + head) * PN + k
    own = tl.load(states_ptr + offset, mask=ok, other=0.0)
    for chunk in range(0, C):
        following = tl.load(states_ptr + offset + stride, mask=ok & (chunk + 1 < C), other=0.0)
        # the state entering this chunk, in the dtype the scan's products take it in
        tl.store(entering_ptr + offset, carry.to(entering_ptr.dtype.element_ty), mask=ok)
        decay = tl.exp(tl.load(cum_ptr + ((batch * heads + head) * C + chunk) * Q + Q - 1))
        carry = carry * decay + own
        own = following
        offset += stride
    tl.store(
        final_ptr + row * sf_b + head * sf_h + k, carry.to(final_ptr.dtype.element_ty), mask=ok
    )


# (BLOCK_M, BLOCK_S, warps, stages) tried per (Q, P, N); the scan only writes y, so
# autotuning's repeated runs are harmless
_SCAN_CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_S": s}, num_warps=w, num_stages=st)
    for m, s, w, st in [(64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 3), (128, 64, 8, 2),
                        (128, 64, 4, 3), (128, 32, 4, 4), (32, 64, 4, 3)]
]  # fmt: skip


@autotune(_SCAN_CONFIGS, key=["Q", "P", "N"])
@triton.jit
def _chunk_scan_kernel(
    x_ptr, c_ptr, cb_ptr, dt_ptr, cum_ptr, states_ptr, d_ptr, y_ptr,
    L, Q, C, G,
    sx_b, sx_l, sx_h, sc_b, sc_l, sc_g,
    P: tl.constexpr, N: tl.constexpr, HEADS_PER_GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    mb, head, bc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    heads = tl.num_programs(1)
    batch, chunk = bc // C, bc % C
    group = head // HEADS_PER_GROUP
    row = (batch * heads + head) * C + chunk
    m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    p, n = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
    tm = chunk * Q + m
    m_ok = (m < Q) & (tm < L)
    cum_m = tl.load(cum_ptr + row * Q + m, mask=m < Q, other=0.0)
    cm = tl.load(
        c_ptr + batch * sc_b + group * sc_g + tm[:, None] * sc_l + n[None, :],
        mask=m_ok[:, None] & (n[None, :] < N),
        other=0.0,
    )
    # the state entering this chunk, read as (N, P)
    entering = tl.load(
        states_ptr + (((batch * C + chunk) * heads + head) * P + p[None, :]) * N + n[:, None],
        mask=(n[:, None] < N) & (p[None, :] < P),
        other=0.0,
    )
    acc = tl.dot(cm, entering, input_precision=PRECISION)
    acc = acc * tl.exp(cum_m)[:, None]
    x_base = x_ptr + batch * sx_b + head * sx_h
    cb_base = cb_ptr + ((batch * C + chunk) * G + group) * Q * Q  # C.B of this chunk, (Q, Q)
    for s0 in range(0, tl.minimum((mb + 1) * BLOCK_M, Q), BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        ts = chunk * Q + s
        s_ok = (s < Q) & (ts < L)
        cb = tl.load(
            cb_base + m[:, None] * Q + s[None, :], mask=(m[:, None] < Q) & s_ok[None, :], other=0.0
        )
        cum_s = tl.load(cum_ptr + row * Q + s, mask=s_ok, other=0.0)
        dt_s = tl.load(dt_ptr + row * Q + s, mask=s_ok, other=0.0)
        causal = m[:, None] >= s[None, :]
        decay = tl.exp(tl.minimum(cum_m[:, None] - cum_s[None, :], 0.0))
        w = tl.where(causal, cb * decay * dt_s[None, :], 0.0)
        xs = tl.load(
            x_base + ts[:, None] * sx_l + p[None, :],
            mask=s_ok[:, None] & (p[None, :] < P),
            other=0.0,
        )  # (S, P)
        acc += tl.dot(w.to(xs.dtype), xs, input_precision=PRECISION)
    xm = tl.load(
        x_base + tm[:, None] * sx_l + p[None, :], mask=m_ok[:, None] & (p[None, :] < P), other=0.0
    )
    acc += tl.load(d_ptr + head) * xm.to(tl.float32)
    out = y_ptr + ((batch * L + tm[:, None]) * heads + head) * P + p[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & (p[None, :] < P))


@triton.jit
def _chunk_products_kernel(
    c_ptr, b_ptr, cb_ptr, L, Q, C,
    sc_b, sc_l, sc_g, sb_b, sb_l, sb_g,
    N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    tile, chunk_group, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    groups = tl.num_programs(1) // C
    chunk, group = chunk_group // groups, chunk_group % groups
    across = tl.cdiv(Q, BLOCK_S)
    m = (tile // across) * BLOCK_M + tl.arange(0, BLOCK_M)
    s = (tile % across) * BLOCK_S + tl.arange(0, BLOCK_S)
    n = tl.arange(0, BLOCK_N)
    tm, ts = chunk * Q + m, chunk * Q + s
    cm = tl.load(
        c_ptr + batch * sc_b + group * sc_g + tm[:, None] * sc_l + n[None, :],
        mask=((m < Q) & (tm < L))[:, None] & (n[None, :] < N),
        other=0.0,
    )  # (M, N); past the end zero, as the padded steps
    bt = tl.load(
        b_ptr + batch * sb_b + group * sb_g + ts[None, :] * sb_l + n[:, None],
        mask=((s < Q) & (ts < L))[None, :] & (n[:, None] < N),
        other=0.0,
    )  # (N, S)
    acc = tl.dot(cm, bt, input_precision=PRECISION)  # products of the inputs, exact in fp32
    out = cb_ptr + (((batch * C + chunk) * groups + group) * Q + m[:, None]) * Q + s[None, :]
    tl.store(out, acc, mask=(m < Q)[:, None] & (s < Q)[None, :])


def _chunk_products(Cm: torch.Tensor, Bm: torch.Tensor, chunk: int) -> torch.Tensor:
    """C.B within each chunk, (B, chunks, G, Q, Q) fp32: shared by the heads of a group, so
    computed once here (a few GFLOP) instead of once per head inside the scan; one kernel
    where PyTorch's casts, padding and fp32 product were five. Cm, Bm (B, L, G, N) views
    with a dense last dimension."""
    b, length, g, n = Cm.shape
    chunks = triton.cdiv(length, chunk)
    cb = torch.empty(b, chunks, g, chunk, chunk, dtype=torch.float32, device=Cm.device)
    block = min(64, triton.next_power_of_2(chunk))
    _chunk_products_kernel[(triton.cdiv(chunk, block) ** 2, chunks * g, b)](
        Cm, Bm, cb, length, chunk, chunks,
        Cm.stride(0), Cm.stride(1), Cm.stride(2), Bm.stride(0), Bm.stride(1), Bm.stride(2),
        N=n, BLOCK_M=block, BLOCK_S=block, BLOCK_N=max(16, triton.next_power_of_2(n)),
        PRECISION="ieee" if Cm.dtype == torch.float32 else "tf32", num_warps=4,
    )  # fmt: skip
    return cb


@triton.jit
def _chunk_dt_kernel(
    dt_ptr, a_ptr, bias_ptr, lengths_ptr, dts_ptr, cum_ptr, L, C, Q, s_b, s_l, dt_min, dt_max,
    BLOCK_Q: tl.constexpr, SOFTPLUS: tl.constexpr, LENGTHS: tl.constexpr,
):  # fmt: skip
    chunk, head, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    heads = tl.num_programs(1)
    q = tl.arange(0, BLOCK_Q)
    t = chunk * Q + q
    real = (q < Q) & (t < L)
    if LENGTHS:  # a padded chunk: the row's tokens past its length are padding
        real = real & (t < tl.load(lengths_ptr + batch))
    dt = tl.load(dt_ptr + batch * s_b + t * s_l + head, mask=real, other=0.0).to(tl.float32)
    if SOFTPLUS:  # dt straight from in_proj: softplus(dt + dt_bias), clamped, as layers.py
        dt = dt + tl.load(bias_ptr + head).to(tl.float32)
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # F.softplus, threshold 20
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dt = tl.where(real, dt, 0.0)  # a zero step neither decays the state nor adds to it
    row = ((batch * heads + head) * C + chunk) * Q
    tl.store(dts_ptr + row + q, dt, mask=q < Q)
    cum = tl.cumsum(dt * tl.load(a_ptr + head).to(tl.float32), axis=0)  # past Q: zeros added
    tl.store(cum_ptr + row + q, cum, mask=q < Q)


def chunk_dt(
    dt: torch.Tensor, A: torch.Tensor, chunk: int, dt_bias=None,
    dt_limit: tuple[float, float] = (0.0, float("inf")), lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """dt and the within-chunk cumulative sum of dt*A, both (B, H, C, Q) fp32, zero past
    the end and past each row's `lengths` (a padded chunk): a zero step adds nothing to the
    state and decays nothing. With `dt_bias`, dt (B, L, H) is in_proj's raw output (a view)
    and softplus(dt + dt_bias) clamped to `dt_limit` is applied here: one kernel where the
    PyTorch ops it replaces launch about ten, each a few microseconds in a chunk graph."""
    b, length, h = dt.shape
    chunks = triton.cdiv(length, chunk)
    dts = torch.empty(b, h, chunks, chunk, dtype=torch.float32, device=dt.device)
    cum = torch.empty_like(dts)
    assert dt.stride(-1) == 1
    _chunk_dt_kernel[(chunks, h, b)](
        dt, A, dt_bias if dt_bias is not None else A, lengths if lengths is not None else A,
        dts, cum, length, chunks, chunk, dt.stride(0), dt.stride(1),
        float(dt_limit[0]), float(dt_limit[1]),
        BLOCK_Q=triton.next_power_of_2(chunk), SOFTPLUS=dt_bias is not None,
        LENGTHS=lengths is not None,
    )  # fmt: skip
    return dts, cum


def _last_dim_dense(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t if t.stride(-1) == 1 else t.contiguous() for t in tensors]


def chunked_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    D: torch.Tensor,
    chunk: int,
    state: torch.Tensor | None = None,
    final: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    dt_bias: torch.Tensor | None = None,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    lengths: torch.Tensor | None = None,
    slots: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y (B, L, H, P) in `out_dtype` and the final state (B, H, P, N) fp32, as
    `ssd.chunked_scan`.

    x (B, L, H, P) and Bm/Cm (B, L, G, N) may be strided views (of the conv output) with a
    dense last dimension; dt (B, L, H) after softplus, or raw with `dt_bias` and
    `dt_limit`, and with `lengths` a padded chunk's (`chunk_dt`). The final state is
    written into `final` when given (it may be `state` itself: a pool row updated in
    place). With `slots`, `state` and `final` are pools (S, H, P, N), of any dtype, and
    row b's states are their rows slots[b]: read and written in place, no gather."""
    b, length, h, p = x.shape
    g, n = Bm.shape[2], Bm.shape[3]
    x, Bm, Cm = _last_dim_dense(x, Bm, Cm)
    dts, cum = chunk_dt(dt, A, chunk, dt_bias, dt_limit, lengths)
    chunks = cum.shape[2]
    states = torch.empty(b, chunks, h, p, n, dtype=torch.float32, device=x.device)
    if final is None:
        final = torch.empty(b, h, p, n, dtype=torch.float32, device=x.device)
    assert slots is not None or final.dtype == torch.float32
    assert final.stride(-1) == 1 and final.stride(-2) == n
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    block_p, block_n = max(16, triton.next_power_of_2(p)), max(16, triton.next_power_of_2(n))
    _chunk_state_kernel[(h, chunks, b)](
        x, Bm, dts, cum, states, length, chunk, chunks,
        x.stride(0), x.stride(1), x.stride(2), Bm.stride(0), Bm.stride(1), Bm.stride(2),
        P=p, N=n, HEADS_PER_GROUP=h // g, BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_L=64,
        PRECISION=precision, num_warps=4, num_stages=2,
    )  # fmt: skip
    init = state if state is not None else final
    if state is not None:
        assert state.stride(-1) == 1 and state.stride(-2) == n
    # small blocks: many programs in flight hide the latency of each one's sequential chain
    block = 256
    entering = torch.empty_like(states, dtype=x.dtype)
    _state_passing_kernel[(triton.cdiv(p * n, block), h, b)](
        states, entering, cum, init, final, slots if slots is not None else cum, chunk, chunks,
        init.stride(0), init.stride(1), final.stride(0), final.stride(1),
        PN=p * n, N=n, HAS_INIT=state is not None, SLOTS=slots is not None, BLOCK=block,
        num_warps=2,
    )  # fmt: skip
    y = torch.empty(b, length, h, p, dtype=out_dtype, device=x.device)
    cb = _chunk_products(Cm, Bm, chunk)
    _chunk_scan_kernel[lambda meta: (triton.cdiv(chunk, meta["BLOCK_M"]), h, b * chunks)](
        x, Cm, cb, dts, cum, entering, D, y, length, chunk, chunks, g,
        x.stride(0), x.stride(1), x.stride(2), Cm.stride(0), Cm.stride(1), Cm.stride(2),
        P=p, N=n, HEADS_PER_GROUP=h // g, BLOCK_P=block_p, BLOCK_N=block_n,
        PRECISION=precision,
    )  # fmt: skip
    return y, final
