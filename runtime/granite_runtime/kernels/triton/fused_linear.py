"""One-token matrix products that compute their own input: the norm or gate before a product
runs inside the product's kernel.

At batch 1 a decode step is ~500 kernels, and on an H200 each costs 1.5-2.5 us even when it
moves almost nothing (bench/results/gpu_bench-h200-10-profile.txt: the RMSNorms, the gated
norm and SiLU*up alone were 0.35 ms of h-micro's 2.7 ms step, plus a gap per launch). The
product that follows each of them reads the whole input vector anyway, so here every program
rebuilds the (small, L2-resident) input it needs and then streams its block of weight rows:

- `norm_linear`: W @ rms_norm(x + alpha * delta) (the residual add; program 0 also writes
  the new residual), before Mamba's in_proj, attention's q/k/v and the MLP's input;
- `gated_norm_linear`: W @ rms_norm(y * silu(z)), Mamba's gated norm before out_proj;
- `silu_mul_linear`: W @ (silu(gate) * up), the MLP's output product;
- `linear`: W @ x, attention's output product;
- the norm variant stacks up to three weights that read the same normed vector: one launch
  gives [q | k | v], or for MoE [router logits | shared gate | up].

The kernel is persistent (a few programs per SM): each program builds the whole input row
once (the norms need its sum of squares first; a few KB from L2) and keeps it in registers,
then streams whole weight rows, BLOCK_N at a time. The rounding is
the PyTorch path's (layers/), step for step, as in fused.py. One activation row only;
batches keep the separate kernels and cuBLAS, whose tensor-core GEMMs serve many rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from granite_runtime.kernels.triton import pdl as triton_pdl
from granite_runtime.kernels.triton.options import DEFAULT, LaunchOptions
from granite_runtime.kernels.triton.pdl import wait_for_previous

# the input each kernel builds (globals a jit function reads must be tl.constexpr)
PLAIN, NORM_ADD, GATED_NORM, SILU_MUL = (tl.constexpr(v) for v in range(4))


@triton.jit
def _input(a_ptr, b_ptr, nw_ptr, sum_ptr, normed_ptr, alpha, eps, first_program,
           K: tl.constexpr, K_PAD: tl.constexpr, PROLOGUE: tl.constexpr,
           HAS_DELTA: tl.constexpr, KEEP_NORMED: tl.constexpr, dtype: tl.constexpr):  # fmt: skip
    """The product's whole input row (K_PAD fp32 values, zero past K), rounded where PyTorch
    rounds: weight * rms_norm(x + alpha * delta) in the model dtype, weight * rms_norm(y *
    silu(z)) (fp32 until the weight), or silu(gate) * up."""
    k = tl.arange(0, K_PAD)
    k_ok = k < K
    a = tl.load(a_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
    if PROLOGUE == NORM_ADD:
        if HAS_DELTA:
            d = tl.load(b_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
            a = (a + alpha * d).to(dtype).to(tl.float32)
            # the new residual, written once (every program computes the same values)
            tl.store(sum_ptr + k, a.to(dtype), mask=k_ok & first_program)
        scale = tl.rsqrt(tl.sum(a * a, axis=0) / K + eps)
        nw = tl.load(nw_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        a = ((a * scale).to(dtype).to(tl.float32) * nw).to(dtype).to(tl.float32)
        if KEEP_NORMED:  # the MoE experts read the normed vector too
            tl.store(normed_ptr + k, a.to(dtype), mask=k_ok & first_program)
    elif PROLOGUE == GATED_NORM:
        z = tl.load(b_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        a = a * (z * tl.sigmoid(z))
        scale = tl.rsqrt(tl.sum(a * a, axis=0) / K + eps)
        nw = tl.load(nw_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        a = (a * scale * nw).to(dtype).to(tl.float32)
    elif PROLOGUE == SILU_MUL:
        up = tl.load(a_ptr + K + k, mask=k_ok, other=0.0).to(tl.float32)
        a = ((a * tl.sigmoid(a)).to(dtype).to(tl.float32) * up).to(dtype).to(tl.float32)
    return a


@triton.jit
def _block_rows(w_ptr, w2_ptr, w3_ptr, N, N2, sw, sw2, sw3, block, rows, K: tl.constexpr,
                K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, STACKED: tl.constexpr):  # fmt: skip
    """Load one block of BLOCK_N weight rows (row n of the stack: of w, then w2, then w3)."""
    n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, K_PAD)
    if STACKED:
        row_ptr = tl.where(
            n < N, w_ptr + n * sw, tl.where(n < N + N2, w2_ptr + (n - N) * sw2,
                                            w3_ptr + (n - N - N2) * sw3)
        )  # fmt: skip
    else:  # one weight: no per-row choice in the streaming loop
        row_ptr = w_ptr + n * sw
    return tl.load(row_ptr[:, None] + k[None, :], mask=(n < rows)[:, None] & (k < K)[None, :])


@triton.jit
def _store_block(out_ptr, w, h, block, rows, BLOCK_N: tl.constexpr):
    n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    out = tl.sum(w.to(tl.float32) * h[None, :], axis=1)
    tl.store(out_ptr + n, out.to(out_ptr.dtype.element_ty), mask=n < rows)


@triton.jit
def _fused_linear_kernel(
    a_ptr, b_ptr, nw_ptr, sum_ptr, normed_ptr, w_ptr, w2_ptr, w3_ptr, out_ptr,
    N, N2, N3, sw, sw2, sw3, alpha, eps,
    K: tl.constexpr, K_PAD: tl.constexpr, PROLOGUE: tl.constexpr, HAS_DELTA: tl.constexpr,
    KEEP_NORMED: tl.constexpr, BLOCK_N: tl.constexpr, STACKED: tl.constexpr,
    PRELOAD: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # Persistent: a few programs per SM, each builds the input once (a few KB from L2) and
    # then streams its share of whole weight rows; the loads of the next rows are in flight
    # while the current ones are summed (num_stages). Launched early (pdl.py), programs
    # wait for the kernel before them at the start. With PRELOAD a program asks for its
    # first block of rows before that wait, so it streams while the kernel before drains
    # (h-micro's step 423.7 -> 443.2 tok/s; two blocks measured slower, 410.9: registers).
    # Up to three weights are stacked into one row space (row n of the output is row n of
    # w, then of w2, then of w3), so the programs share all rows evenly.
    pid, programs = tl.program_id(0), tl.num_programs(0)
    rows = N + N2 + N3
    if PRELOAD:
        first = _block_rows(w_ptr, w2_ptr, w3_ptr, N, N2, sw, sw2, sw3, pid, rows,
                            K, K_PAD, BLOCK_N, STACKED)  # fmt: skip
    wait_for_previous(PDL)
    h = _input(a_ptr, b_ptr, nw_ptr, sum_ptr, normed_ptr, alpha, eps, pid == 0,
               K, K_PAD, PROLOGUE, HAS_DELTA, KEEP_NORMED, out_ptr.dtype.element_ty)  # fmt: skip
    if PRELOAD:  # (the grid never has more programs than blocks)
        _store_block(out_ptr, first, h, pid, rows, BLOCK_N)
    for block in range(pid + PRELOAD * programs, tl.cdiv(rows, BLOCK_N), programs):
        w = _block_rows(w_ptr, w2_ptr, w3_ptr, N, N2, sw, sw2, sw3, block, rows,
                        K, K_PAD, BLOCK_N, STACKED)  # fmt: skip
        _store_block(out_ptr, w, h, block, rows, BLOCK_N)


# (BLOCK_N, programs per SM, num_warps, num_stages); bench/gpu_bench.py `fused_linear_kernels`
# times the block shapes against cuBLAS with every weight cold, as in a step.
# First sweep (H200, bench/results/gpu_bench-h200-11/12-sweep.txt): 2-4 rows a load, 8
# programs per SM. With the first block asked for before the wait (preload), the winners
# moved to fewer programs per SM holding 4 rows each (bench/results/gpu_bench-h200-23-sweep.txt,
# us per product, old shape -> new): h-micro in_proj 13.1 -> 10.1, out_proj (4096 wide)
# 8.2 -> 5.9, MLP input 18.2 -> 17.9; h-tiny in_proj 9.2 -> 6.8, out_proj (3072) 5.8 ->
# 5.1, router + shared input 4.6 -> 3.5. Inputs wider than 4096 (h-micro's MLP output,
# 8192) keep 1 row a load, 4 programs per SM (10.8 us, unchanged); the tile stays <= 16K
# elements. These shapes need the preload: without it h-micro's step fell from 474 to 368
# tok/s, so with the preload off (a benchmark's comparison) the narrow products keep the
# first sweep's 2 rows and 8 programs per SM.
def config_for(rows: int, inner: int, preload: bool = True) -> tuple[int, int, int, int]:
    width = triton.next_power_of_2(inner)
    if width <= 2048 and not preload:
        return (4 if rows >= 16384 else 2), 8, 8, 3
    if width <= 2048:
        return 4, 4, 8, 4
    if width <= 4096:
        return 4, 2, 8, 3
    return 1, 4, 8, 3


# Whether a product's programs ask for their first block of rows before the wait
# (LaunchOptions.preload; off is a benchmark's comparison). H200: h-micro 423.8 -> 443.4
# tok/s. The product after the MoE experts first stayed out (with the earlier shapes, h-tiny
# 595.5 -> 576.5 when it preloaded); with the preload's own shapes it pays there too: h-tiny
# 664.8 -> 680.0 (bench/results/gpu_bench-h200-28-preload-all.txt).
_SMS: dict[int, int] = {}


def _sms(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def _launch(prologue, a, b, norm_w, total, weights, alpha, eps, inner, dtype, launch, normed=None):
    assert 1 <= len(weights) <= 3
    w1, w2, w3 = (*weights, *[weights[0]] * (3 - len(weights)))
    counts = [w.shape[0] for w in weights] + [0] * (3 - len(weights))
    rows = sum(counts)
    out = torch.empty(1, rows, dtype=dtype, device=w1.device)
    block_n, per_sm, warps, stages = launch.linear_blocks or config_for(rows, inner, launch.preload)
    sms = _sms(w1.device) if w1.is_cuda else 4
    _fused_linear_kernel[(min(triton.cdiv(rows, block_n), per_sm * sms),)](
        a, b if b is not None else a, norm_w if norm_w is not None else a,
        total if total is not None else a, normed if normed is not None else a, w1, w2, w3,
        out, *counts, w1.stride(0), w2.stride(0), w3.stride(0), alpha, eps,
        K=inner, K_PAD=triton.next_power_of_2(inner), PROLOGUE=prologue.value,
        HAS_DELTA=b is not None and prologue is NORM_ADD, KEEP_NORMED=normed is not None,
        BLOCK_N=block_n, STACKED=len(weights) > 1, PRELOAD=int(launch.preload),
        num_warps=warps, num_stages=stages, **triton_pdl.options(w1, launch.pdl),
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
    x, delta, alpha: float, norm_weight, eps: float, *weights, keep_normed=False,
    launch: LaunchOptions = DEFAULT,
):  # fmt: skip
    """(x + alpha * delta, [w1 | w2 | w3] @ h) for one row and 1-3 stacked weights, h =
    norm_weight * rms_norm(x + alpha * delta); delta None means no add (the first layer) and
    then x itself comes back. With keep_normed, h (one row) is returned third."""
    x1 = _row(x)
    total = torch.empty_like(x1) if delta is not None else None
    normed = torch.empty_like(x1) if keep_normed else None
    d1 = _row(delta) if delta is not None else None
    out = _launch(
        NORM_ADD, x1, d1, norm_weight, total, weights, alpha, eps, x1.numel(), x.dtype, launch,
        normed,
    )  # fmt: skip
    lead = x.shape[:-1]
    result = (total.view(x.shape) if total is not None else x), out.view(*lead, -1)
    return (*result, normed.view(1, -1)) if keep_normed else result


def gated_norm_linear(y, z, norm_weight, eps: float, weight, launch: LaunchOptions = DEFAULT):
    """weight @ (norm_weight * rms_norm(y * silu(z))) for one row (one norm group), in z's
    dtype; y may be fp32 (the scan's output) and z a strided view."""
    out = _launch(
        GATED_NORM, _row(y), _row(z), norm_weight, None, [weight], 1.0, eps, z.shape[-1],
        z.dtype, launch,
    )  # fmt: skip
    return out.view(*z.shape[:-1], -1)


def silu_mul_linear(gate_up, weight, launch: LaunchOptions = DEFAULT):
    """weight @ (silu(gate) * up) for one row of gate_up = [gate | up]."""
    inner = gate_up.shape[-1] // 2
    out = _launch(
        SILU_MUL, _row(gate_up), None, None, None, [weight], 1.0, 0.0, inner, gate_up.dtype,
        launch,
    )  # fmt: skip
    return out.view(*gate_up.shape[:-1], -1)


def linear(x, weight, launch: LaunchOptions = DEFAULT):
    """weight @ x for one row, in this kernel's persistent form (no prologue): the attention
    output product, where cuBLAS would break the chain of early-launched kernels."""
    out = _launch(
        PLAIN, _row(x), None, None, None, [weight], 1.0, 0.0, x.shape[-1], x.dtype, launch
    )
    return out.view(*x.shape[:-1], -1)
