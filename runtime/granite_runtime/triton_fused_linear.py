"""One-token matrix products that compute their own input: the norm or gate before a product
runs inside the product's kernel.

At batch 1 a decode step is ~500 kernels, and on an H200 each costs 1.5-2.5 us even when it
moves almost nothing (bench/results-gpu_bench-h200-10-profile.txt: the RMSNorms, the gated
norm and SiLU*up alone were 0.35 ms of h-micro's 2.7 ms step, plus a gap per launch). The
product that follows each of them reads the whole input vector anyway, so here every program
rebuilds the (small, L2-resident) input it needs and then streams its block of weight rows:

- `norm_linear`: W @ rms_norm(x + alpha * delta) (the residual add; program 0 also writes
  the new residual), before Mamba's in_proj and the MLP's input;
- `gated_norm_linear`: W @ rms_norm(y * silu(z)), Mamba's gated norm before out_proj;
- `silu_mul_linear`: W @ (silu(gate) * up), the MLP's output product;
- the norm variant can stack two weights (`second`): the MoE router and the shared MLP's
  input read the same normed vector, so one launch gives [router logits | gate | up].

The norms need the input's sum of squares before the first product, so each program makes
two passes over the input (a few KB from L2) and one over its weight rows. The rounding is
the PyTorch path's (layers.py), step for step, as in triton_fused.py. One activation row only;
batches keep the separate kernels and cuBLAS, whose tensor-core GEMMs serve many rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# the input each kernel builds (globals a jit function reads must be tl.constexpr)
PLAIN, NORM_ADD, GATED_NORM, SILU_MUL = (tl.constexpr(v) for v in range(4))


@triton.jit
def _input(a_ptr, b_ptr, k, k_ok, alpha, K: tl.constexpr, PROLOGUE: tl.constexpr,
           HAS_DELTA: tl.constexpr, dtype: tl.constexpr):  # fmt: skip
    """The input chunk at columns k before any norm scale, in fp32, rounded where PyTorch
    rounds: x + alpha * delta (in the model dtype), y * silu(z) (fp32), silu(gate) * up."""
    a = tl.load(a_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
    if PROLOGUE == NORM_ADD:
        if HAS_DELTA:
            d = tl.load(b_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
            a = (a + alpha * d).to(dtype).to(tl.float32)
    elif PROLOGUE == GATED_NORM:
        z = tl.load(b_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        a = a * (z * tl.sigmoid(z))
    elif PROLOGUE == SILU_MUL:
        up = tl.load(a_ptr + K + k, mask=k_ok, other=0.0).to(tl.float32)
        a = ((a * tl.sigmoid(a)).to(dtype).to(tl.float32) * up).to(dtype).to(tl.float32)
    return a


@triton.jit
def _fused_linear_kernel(
    a_ptr, b_ptr, nw_ptr, sum_ptr, normed_ptr, w_ptr, w2_ptr, out_ptr,
    N, N2, sw, sw2, alpha, eps,
    K: tl.constexpr, PROLOGUE: tl.constexpr, HAS_DELTA: tl.constexpr, KEEP_NORMED: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    first = tl.cdiv(N, BLOCK_N)  # programs of the first weight; the rest read the second
    dtype = out_ptr.dtype.element_ty
    if pid < first:
        w_rows, stride, rows, col0 = w_ptr, sw, N, N * 0
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    else:
        w_rows, stride, rows, col0 = w2_ptr, sw2, N2, N
        n = (pid - first) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < rows
    scale = 1.0
    if PROLOGUE == NORM_ADD or PROLOGUE == GATED_NORM:  # noqa: SIM109 (Triton has no `in`)
        squares = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            h = _input(a_ptr, b_ptr, k, k_ok, alpha, K, PROLOGUE, HAS_DELTA, dtype)
            squares += h * h
            if PROLOGUE == NORM_ADD and HAS_DELTA:
                # the new residual, written once (every program computes the same values)
                tl.store(sum_ptr + k, h.to(dtype), mask=k_ok & (pid == 0))
        scale = tl.rsqrt(tl.sum(squares, axis=0) / K + eps)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        h = _input(a_ptr, b_ptr, k, k_ok, alpha, K, PROLOGUE, HAS_DELTA, dtype)
        if PROLOGUE == NORM_ADD:  # weight * rms_norm(h).to(dtype), in the model dtype
            nw = tl.load(nw_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
            h = ((h * scale).to(dtype).to(tl.float32) * nw).to(dtype).to(tl.float32)
            if KEEP_NORMED:  # the MoE experts read the normed vector too
                tl.store(normed_ptr + k, h.to(dtype), mask=k_ok & (pid == 0))
        elif PROLOGUE == GATED_NORM:  # the norm stays fp32 (y's dtype) until the weight
            nw = tl.load(nw_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
            h = (h * scale * nw).to(dtype).to(tl.float32)
        w = tl.load(w_rows + n[:, None] * stride + k[None, :], mask=n_ok[:, None] & k_ok[None, :])
        acc += w.to(tl.float32) * h[None, :]
    out = tl.sum(acc, axis=1)
    tl.store(out_ptr + col0 + n, out.to(dtype), mask=n_ok)


# (BLOCK_N, BLOCK_K, num_warps, num_stages) by output rows; bench/gpu_bench.py
# `fused_linear_kernels` times each against cuBLAS with every weight cold, as in a step.
def config_for(rows: int, inner: int) -> tuple[int, int, int, int]:
    block_n = 4
    while block_n < 64 and triton.cdiv(rows, block_n * 2) >= 264:  # >= 2 programs per SM
        block_n *= 2
    return block_n, min(512, triton.next_power_of_2(inner)), 4, 3


CONFIG_OVERRIDE: tuple[int, int, int, int] | None = None  # a benchmark's forced block shape


def _launch(prologue, a, b, norm_w, total, weight, second, alpha, eps, inner, dtype, normed=None):
    n = weight.shape[0]
    n2 = second.shape[0] if second is not None else 0
    out = torch.empty(1, n + n2, dtype=dtype, device=weight.device)
    block_n, block_k, warps, stages = CONFIG_OVERRIDE or config_for(n + n2, inner)
    grid = (triton.cdiv(n, block_n) + triton.cdiv(n2, block_n),)
    w2 = second if second is not None else weight
    _fused_linear_kernel[grid](
        a, b if b is not None else a, norm_w if norm_w is not None else a,
        total if total is not None else a, normed if normed is not None else a, weight, w2, out,
        n, n2, weight.stride(0), w2.stride(0), alpha, eps,
        K=inner, PROLOGUE=prologue.value, HAS_DELTA=b is not None and prologue is NORM_ADD,
        KEEP_NORMED=normed is not None,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def applies(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """One activation row, bf16/fp16, weights row-major in the same dtype."""
    return (
        x.is_cuda
        and x.numel() == x.shape[-1]
        and x.dtype in (torch.bfloat16, torch.float16)
        and all(w.dtype == x.dtype and w.stride(-1) == 1 for w in weights)
    )


def _row(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1) if t.is_contiguous() else t.reshape(-1).contiguous()


def norm_linear(
    x, delta, alpha: float, norm_weight, eps: float, weight, second=None, keep_normed=False
):
    """(x + alpha * delta, [weight | second] @ h) for one row, h = norm_weight *
    rms_norm(x + alpha * delta); delta None means no add (the first layer) and then x itself
    comes back. With keep_normed, h (one row) is returned third."""
    x1 = _row(x)
    total = torch.empty_like(x1) if delta is not None else None
    normed = torch.empty_like(x1) if keep_normed else None
    d1 = _row(delta) if delta is not None else None
    out = _launch(
        NORM_ADD, x1, d1, norm_weight, total, weight, second, alpha, eps, x1.numel(), x.dtype,
        normed,
    )  # fmt: skip
    lead = x.shape[:-1]
    result = (total.view(x.shape) if total is not None else x), out.view(*lead, -1)
    return (*result, normed.view(1, -1)) if keep_normed else result


def gated_norm_linear(y, z, norm_weight, eps: float, weight):
    """weight @ (norm_weight * rms_norm(y * silu(z))) for one row (one norm group), in z's
    dtype; y may be fp32 (the scan's output) and z a strided view."""
    out = _launch(
        GATED_NORM, _row(y), _row(z), norm_weight, None, weight, None, 1.0, eps,
        z.shape[-1], z.dtype,
    )  # fmt: skip
    return out.view(*z.shape[:-1], -1)


def silu_mul_linear(gate_up, weight):
    """weight @ (silu(gate) * up) for one row of gate_up = [gate | up]."""
    inner = gate_up.shape[-1] // 2
    out = _launch(
        SILU_MUL, _row(gate_up), None, None, None, weight, None, 1.0, 0.0, inner, gate_up.dtype
    )
    return out.view(*gate_up.shape[:-1], -1)
