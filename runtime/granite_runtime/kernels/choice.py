"""Which kernels a model's layers run: one KernelChoice, resolved when the model is loaded
(kernels/select.py) and held by every layer (`layer.kernels`). A forward reads only its own
choice and the shapes in front of it; nothing is switched process-wide. Benchmarks and tests
compare paths by building another choice (dataclasses.replace) and applying it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from types import SimpleNamespace

from granite_runtime.kernels.triton.options import DEFAULT, LaunchOptions


@dataclass(frozen=True, kw_only=True)
class KernelChoice:
    # the C kernels (kernels/cpu) for decode-sized calls on the CPU: a few rows through
    # matrix-vector products, norms and the whole Mamba step
    c_decode: bool = False
    # the Triton decode kernels: the Mamba state update and conv window, attention over
    # the slot pool, the GEMV, fp8 matvec, fused norms and gates, experts read in place
    triton: bool = False
    # the Triton chunked scan for prefill (kernels/triton/scan.py)
    triton_scan: bool = False
    # one token's products with their norm or gate inside (kernels/triton/fused_linear.py)
    fused_linear: bool = False
    # one token's attention layer as 3 kernels (layers.attention.Attention.fused_input)
    fused_attention: bool = False
    # MoE steps of many tokens through torch._grouped_mm (static shapes, graph-safe)
    grouped_mm: bool = False
    # a chunk graph's attention as query blocks over the pool (kernels/triton/
    # chunk_attention.py) instead of one-token rows through the decode kernel, whose reads
    # grow with the chunk's start (bench/NOTES.md: 1.07x the rows' rate at start 0, 2.6x
    # at 30,720 on an H100); GKIT_FLASH_CHUNKS=0 keeps the rows
    chunk_attention: bool = False
    launch: LaunchOptions = DEFAULT

    @cached_property
    def ops(self) -> SimpleNamespace:
        """The Triton kernel modules, imported on first use: CPU builds of torch have no
        Triton, and a choice without it never asks."""
        from granite_runtime.kernels.triton import (
            chunk_attention,
            decode,
            fused,
            fused_linear,
            gemv,
            moe,
            scan,
        )

        return SimpleNamespace(
            chunk_attention=chunk_attention, decode=decode, fused=fused,
            fused_linear=fused_linear, gemv=gemv, moe=moe, scan=scan,
        )  # fmt: skip


# PyTorch's own ops everywhere: what a layer does until a choice is applied
PYTORCH = KernelChoice()
