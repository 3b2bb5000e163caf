"""Decode-sized matrix products (a few rows times a weight) in Triton, where they beat cuBLAS.

A decode step is a chain of products of 1-16 activation rows with each weight: pure weight
streaming. cuBLAS picks split-K kernels for the shapes whose output is narrow (Granite's
out_proj and MLP output: 2048 columns from 4096-8192 inputs) and then a separate reduction
kernel; on an H200 those ran at 2.7 TB/s of weight reads where the wide products reach 3.6
(bench/NOTES.md). The kernel here gives each program a block of weight rows and
streams its whole input width, no split and no second kernel.

Which of cuBLAS and this kernel's block shapes is fastest depends on the shape and the card,
so `linear` measures once per (rows, out, in, dtype) with CUDA events and keeps the winner.
The measuring happens at the engine's warm-up, before CUDA graphs are captured; a shape first
seen during a capture takes cuBLAS, which is never wrong.

Only weights too large to stay in the L2 cache are measured (`MEASURED_L2_MULTIPLE`): a
repeated call on a 33 MB weight reads it from the H200's 50 MB L2, while in a decode step
every weight comes cold from HBM. Timing L2-hot once made the chooser pick a 32-program block
shape for h-micro's MLP output that was faster L2-hot and 3x slower cold (33 us against
cuBLAS's 11 us in the graphed step, 364 -> 274 tok/s). Smaller weights keep cuBLAS here; the
fused kernels (fused_linear.py) carry their own block shapes, measured cold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

MAX_ROWS = 16  # the padded row tile of tl.dot; more rows go to cuBLAS
# weights smaller than this many L2 caches keep cuBLAS (a repeated timing would read them hot)
MEASURED_L2_MULTIPLE = 4


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, out_ptr, M, N, sx, sw, so,
    K: tl.constexpr, ONE_ROW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    if ONE_ROW:  # a product and a sum per weight element: no tensor-core padding
        acc2 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            w_mask = n_ok[:, None] & k_ok[None, :]
            w = tl.load(w_ptr + n[:, None] * sw + k[None, :], mask=w_mask, other=0.0)
            x = tl.load(x_ptr + k, mask=k_ok, other=0.0)
            acc2 += w.to(tl.float32) * x.to(tl.float32)[None, :]
        acc = tl.sum(acc2, axis=1)
        tl.store(out_ptr + n, acc.to(out_ptr.dtype.element_ty), mask=n_ok)
    else:  # up to 16 rows through the tensor cores, the rows padded to 16
        m = tl.arange(0, 16)
        m_ok = m < M
        acc = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            w = tl.load(
                w_ptr + n[:, None] * sw + k[None, :],
                mask=n_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            x = tl.load(
                x_ptr + m[None, :] * sx + k[:, None], mask=k_ok[:, None] & m_ok[None, :], other=0.0
            )
            acc = tl.dot(w, x, acc)
        out = out_ptr + m[None, :] * so + n[:, None]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


# (BLOCK_N, BLOCK_K, num_warps, num_stages): narrow blocks give enough programs to fill
# every SM on 2048-column outputs; deep K blocks keep many loads in flight per program.
CONFIGS = [
    (8, 1024, 4, 3),
    (16, 512, 4, 4),
    (16, 1024, 4, 3),
    (32, 256, 4, 4),
    (32, 512, 4, 3),
    (64, 256, 4, 3),
    (64, 128, 4, 4),
]


def gemv(x: torch.Tensor, weight: torch.Tensor, config=(16, 512, 4, 4)) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T with one of CONFIGS; M <= MAX_ROWS."""
    m, k = x.shape
    n = weight.shape[0]
    block_n, block_k, warps, stages = config
    one_row = m == 1
    if not one_row:
        block_n = max(block_n, 16)  # tl.dot's smallest tile
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, out, m, n, x.stride(0), weight.stride(0), out.stride(0),
        K=k, ONE_ROW=one_row, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def _time(fn, runs: int = 10) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(runs):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / runs


# (rows, out, in, dtype, device index) -> None (cuBLAS) or the config that beat it
CHOICE: dict[tuple, tuple | None] = {}


def _choose(x: torch.Tensor, weight: torch.Tensor) -> tuple | None:
    timings = {None: _time(lambda: F.linear(x, weight))}
    for config in CONFIGS:
        if x.shape[0] > 1 and config[0] < 16:
            continue
        timings[config] = _time(lambda c=config: gemv(x, weight, c))
    return min(timings, key=timings.get)


def _l2_bytes(device: torch.device) -> int:
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)


def applies(x: torch.Tensor, weight: torch.Tensor, bias) -> bool:
    rows = x.numel() // x.shape[-1]
    big = weight.numel() * weight.element_size() >= MEASURED_L2_MULTIPLE * _l2_bytes(x.device)
    return (
        big
        and bias is None
        and x.is_cuda
        and 0 < rows <= MAX_ROWS
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == x.dtype
        and weight.stride(-1) == 1
    )


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) for a few rows, through whichever path measured fastest here."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    key = (flat.shape[0], *weight.shape, x.dtype, x.device.index)
    if key not in CHOICE:
        if torch.cuda.is_current_stream_capturing():  # no timing inside a graph capture
            return F.linear(x, weight)
        CHOICE[key] = _choose(flat, weight)
    config = CHOICE[key]
    if config is None:
        return F.linear(x, weight)
    return gemv(flat, weight, config).view(*x.shape[:-1], weight.shape[0])
