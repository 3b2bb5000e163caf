"""Triton kernels that fuse the small elementwise steps around a layer's matrix products.

In PyTorch each of these is a chain of 4-10 kernels over the same rows (casts to fp32,
SiLU, products, squares, means, rsqrt, casts back): at prefill every link is a full pass over
tensors of hundreds of MB, at decode every link is a launch of a few microseconds. Each
kernel here reads its inputs once and writes its outputs once.

The rounding follows the PyTorch path step for step (layers.py): values are rounded to the
model dtype exactly where PyTorch rounds them, so bf16 results agree to the last bit or one.

- `add_rms_norm`: the residual add and the RMSNorm that follows it;
- `gated_rms_norm`: Mamba's output gate (y * silu(z)) and its (grouped) RMSNorm;
- `silu_mul`: SwiGLU's silu(gate) * up;
- `conv_prefill`: Mamba's causal depthwise conv + SiLU over a prompt chunk, continuing the
  window held in the conv pool (the one-token case is decode.conv_update);
- `conv_window_after`: then the window moved past the chunk, in the pool.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from granite_runtime.kernels.triton import pdl as triton_pdl
from granite_runtime.kernels.triton.autotune import autotune
from granite_runtime.kernels.triton.options import DEFAULT, LaunchOptions
from granite_runtime.kernels.triton.pdl import wait_for_previous


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (rows, D) without a copy where the rows are evenly strided."""
    return t.reshape(-1, t.shape[-1])


def _warps(block: int) -> int:
    return max(1, min(16, block // 256))


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, d_ptr, w_ptr, sum_ptr, out_ptr, D, sx, sd, alpha, eps, BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    wait_for_previous(PDL)
    row = tl.program_id(0)
    k = tl.arange(0, BLOCK)
    ok = k < D
    x = tl.load(x_ptr + row * sx + k, mask=ok, other=0.0).to(tl.float32)
    d = tl.load(d_ptr + row * sd + k, mask=ok, other=0.0).to(tl.float32)
    total = (x + alpha * d).to(sum_ptr.dtype.element_ty)  # torch.add(x, d, alpha=alpha)
    tl.store(sum_ptr + row * D + k, total, mask=ok)
    h = total.to(tl.float32)
    normed = h * tl.rsqrt(tl.sum(h * h, axis=0) / D + eps)
    w = tl.load(w_ptr + k, mask=ok, other=0.0).to(tl.float32)
    out = normed.to(out_ptr.dtype.element_ty).to(tl.float32) * w
    tl.store(out_ptr + row * D + k, out.to(out_ptr.dtype.element_ty), mask=ok)


def add_rms_norm(
    x, delta, alpha: float, weight, eps: float, launch: LaunchOptions = DEFAULT
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + alpha * delta, weight * rms_norm(x + alpha * delta)), both in x's dtype."""
    shape = x.shape
    x2, d2 = _rows(x), _rows(delta)
    total = torch.empty(shape, dtype=x.dtype, device=x.device)
    out = torch.empty_like(total)
    rows, size = x2.shape
    block = triton.next_power_of_2(size)
    _add_rms_norm_kernel[(rows,)](
        x2, d2, weight, total, out, size, x2.stride(0), d2.stride(0), alpha, eps,
        BLOCK=block, num_warps=_warps(block), **triton_pdl.options(x, launch.pdl),
    )  # fmt: skip
    return total, out


@triton.jit
def _gated_rms_norm_kernel(
    y_ptr, z_ptr, w_ptr, out_ptr, D, sy, sz, eps, BLOCK: tl.constexpr, PDL: tl.constexpr
):  # fmt: skip
    wait_for_previous(PDL)
    row, group = tl.program_id(0), tl.program_id(1)
    k = tl.arange(0, BLOCK)
    ok = k < D
    col = group * D + k
    y = tl.load(y_ptr + row * sy + col, mask=ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * sz + col, mask=ok, other=0.0).to(tl.float32)
    h = y * (z * tl.sigmoid(z))
    normed = h * tl.rsqrt(tl.sum(h * h, axis=0) / D + eps)
    w = tl.load(w_ptr + col, mask=ok, other=0.0).to(tl.float32)
    # PyTorch casts the normed value back to y's dtype (fp32 from the scan) before the weight
    out = normed.to(y_ptr.dtype.element_ty).to(tl.float32) * w
    tl.store(
        out_ptr + row * tl.num_programs(1) * D + col, out.to(out_ptr.dtype.element_ty), mask=ok
    )


def gated_rms_norm(
    y, z, weight, eps: float, groups: int, launch: LaunchOptions = DEFAULT
) -> torch.Tensor:
    """weight * rms_norm(y * silu(z)) over each of `groups` equal parts, in z's dtype;
    y may be fp32 (the scan's output) and z a strided view of the in_proj output."""
    y2, z2 = _rows(y), _rows(z)
    rows, width = z2.shape
    out = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    size = width // groups
    block = triton.next_power_of_2(size)
    _gated_rms_norm_kernel[(rows, groups)](
        y2, z2, weight, out, size, y2.stride(0), z2.stride(0), eps,
        BLOCK=block, num_warps=_warps(block), **triton_pdl.options(z, launch.pdl),
    )  # fmt: skip
    return out


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, inner, s_row, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous(PDL)
    row = tl.program_id(0)
    k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = k < inner
    gate = tl.load(gu_ptr + row * s_row + k, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + row * s_row + inner + k, mask=ok, other=0.0).to(tl.float32)
    act = (gate * tl.sigmoid(gate)).to(out_ptr.dtype.element_ty).to(tl.float32)  # F.silu
    tl.store(out_ptr + row * inner + k, (act * up).to(out_ptr.dtype.element_ty), mask=ok)


def silu_mul(gate_up: torch.Tensor, launch: LaunchOptions = DEFAULT) -> torch.Tensor:
    """silu(gate) * up where gate_up = [gate | up] along the last dimension."""
    g2 = _rows(gate_up)
    rows, inner = g2.shape[0], g2.shape[1] // 2
    out = torch.empty(*gate_up.shape[:-1], inner, dtype=gate_up.dtype, device=gate_up.device)
    block = min(2048, triton.next_power_of_2(inner))
    _silu_mul_kernel[(rows, triton.cdiv(inner, block))](
        g2,
        out,
        inner,
        g2.stride(0),
        BLOCK=block,
        num_warps=4,
        **triton_pdl.options(g2, launch.pdl),
    )
    return out


@autotune(
    [
        triton.Config({"BLOCK_L": bl, "BLOCK_C": bc}, num_warps=w)
        for bl, bc, w in ((32, 128, 4), (64, 128, 4), (16, 256, 4), (64, 256, 8), (128, 64, 4))
    ],
    key=["Cn", "K"],
)
@triton.jit
def _conv_prefill_kernel(
    x_ptr, pool_ptr, w_ptr, b_ptr, slots_ptr, out_ptr, L, Cn,
    sx_b, sx_l, s_slot, s_chan,
    HAS_BIAS: tl.constexpr, K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    lb, cb, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < Cn
    slot = tl.load(slots_ptr + batch)
    acc = tl.zeros((BLOCK_L, BLOCK_C), tl.float32)
    for k in tl.static_range(K):
        src = t - (K - 1) + k  # input position feeding tap k; < 0 lies in the pool window
        from_x = tl.load(
            x_ptr + batch * sx_b + src[:, None] * sx_l + c[None, :],
            mask=(src[:, None] >= 0) & (src[:, None] < L) & c_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        from_pool = tl.load(
            pool_ptr + slot * s_slot + c[None, :] * s_chan + (K - 1 + src[:, None]),
            mask=(src[:, None] < 0) & (src[:, None] >= 1 - K) & c_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        w = tl.load(w_ptr + c * K + k, mask=c_ok, other=0.0).to(tl.float32)
        acc += (from_x + from_pool) * w[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    out = (acc * tl.sigmoid(acc)).to(out_ptr.dtype.element_ty)
    tl.store(
        out_ptr + (batch * L + t[:, None]) * Cn + c[None, :],
        out,
        mask=(t[:, None] < L) & c_ok[None, :],
    )


def conv_prefill(x, conv_pool, weight, bias, slots) -> torch.Tensor:
    """silu(causal depthwise conv) over x (B, L, C), a view with a dense last dimension,
    continuing each row's window in conv_pool (S, C, K-1) at `slots`; the caller then moves
    the window (`Batch.window_after`), after this kernel has read it. weight (C, K).
    Returns (B, L, C) contiguous."""
    b, length, channels = x.shape
    k = weight.shape[1]
    assert x.stride(-1) == 1 and conv_pool.stride(-1) == 1 and weight.is_contiguous()
    out = torch.empty(b, length, channels, dtype=x.dtype, device=x.device)

    def grid(meta):
        return (triton.cdiv(length, meta["BLOCK_L"]), triton.cdiv(channels, meta["BLOCK_C"]), b)

    # autotuning reruns the kernel: safe, as it only writes `out`
    _conv_prefill_kernel[grid](
        x, conv_pool, weight, bias if bias is not None else weight, slots, out, length,
        channels, x.stride(0), x.stride(1), conv_pool.stride(0), conv_pool.stride(1),
        HAS_BIAS=bias is not None, K=k,
    )  # fmt: skip
    return out


@triton.jit
def _conv_window_kernel(
    x_ptr, pool_ptr, slots_ptr, lengths_ptr, L, Cn, sx_b, sx_l, s_slot, s_chan,
    W: tl.constexpr, LENGTHS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cb, batch = tl.program_id(0), tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < Cn
    slot = tl.load(slots_ptr + batch)
    n = tl.load(lengths_ptr + batch) if LENGTHS else L
    window = pool_ptr + slot * s_slot + c * s_chan
    # Entry i of the new window is input n - W + i: from x, or while that is < 0 from the
    # old window's entry n + i >= i, which writing entries 0..i-1 has left as it was.
    for i in tl.static_range(W):
        src = n - W + i
        from_x = tl.load(x_ptr + batch * sx_b + src * sx_l + c, mask=c_ok & (src >= 0), other=0.0)
        from_pool = tl.load(window + W + src, mask=c_ok & (src < 0), other=0.0)
        value = tl.where(src >= 0, from_x.to(tl.float32), from_pool.to(tl.float32))
        tl.store(window + i, value.to(pool_ptr.dtype.element_ty), mask=c_ok)


def conv_window_after(x, conv_pool, slots, lengths=None) -> None:
    """Move each row's conv window in conv_pool (S, C, W) at `slots` past chunk x (B, L, C),
    a view with a dense last dimension, in place: its last W inputs, counting only the row's
    first lengths[b] tokens where given (a padded chunk), as `Batch.window_after`. One
    kernel where the PyTorch ops launch about ten; run it after conv_prefill has read the
    old window (same stream)."""
    b, length, channels = x.shape
    assert x.stride(-1) == 1 and conv_pool.stride(-1) == 1
    block = min(1024, triton.next_power_of_2(channels))
    _conv_window_kernel[(triton.cdiv(channels, block), b)](
        x, conv_pool, slots, lengths if lengths is not None else slots, length, channels,
        x.stride(0), x.stride(1), conv_pool.stride(0), conv_pool.stride(1),
        W=conv_pool.shape[-1], LENGTHS=lengths is not None, BLOCK_C=block, num_warps=4,
    )  # fmt: skip
