"""CPU-specific preparation of a loaded model for fast batch-1 decode.

On this workplace's CPUs a batch-1 decode step is a long series of matrix-vector products
that must stream every weight from memory. PyTorch's default path (MKL sgemv) reaches about
9-10 GB/s on the real layer shapes with 2 threads; oneDNN with weights re-laid out once
reaches 15-17 GB/s; the C kernel in csrc/cpu_decode.c reaches 17-22 GB/s, the read ceiling
(bench/NOTES.md). The C kernels are used where they can be built (a C compiler with
OpenMP); otherwise the oneDNN packed linears. Either way the product is fp32 with fp32
accumulation, so outputs agree with the plain path to ~1e-6 relative.
"""

from __future__ import annotations

import torch
from torch import nn

from granite_runtime.kernels import select
from granite_runtime.layers.linear import DecodeLinear, swap_linears


class PackedLinear(nn.Module):
    """y = x W^T + b with W pre-packed for oneDNN; a drop-in for an inference nn.Linear."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight, 1))
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.weight_dtype = weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous():
            x = x.contiguous()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def prepare_for_cpu(model: nn.Module) -> str:
    """Swap the model's fp32 linears for the fastest CPU decode path here; returns its name."""
    if model.kernels.c_decode:
        swap_linears(model, DecodeLinear, _fp32_cpu_linear)
        select.apply(model, model.kernels)  # the new linears take the model's choice
        return "c-kernels"
    return "onednn" if prepack_linears(model) else "pytorch"


def _fp32_cpu_linear(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Linear)
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
    )


def prepack_linears(model: nn.Module) -> int:
    """Replace every fp32 nn.Linear on the CPU with a PackedLinear; returns how many.

    fp32 only: oneDNN's bf16 path needs AVX-512 BF16 or AVX-NE-CONVERT, which many CPUs
    (this workplace's included) lack; where a layer cannot be packed it stays as it was.
    """
    if not torch.backends.mkldnn.is_available():
        return 0
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if not _fp32_cpu_linear(child):
                continue
            try:
                with torch.no_grad():
                    packed = PackedLinear(child)
            except RuntimeError:  # this CPU or build has no oneDNN kernel for it
                return swapped
            setattr(module, name, packed)
            swapped += 1
    return swapped
