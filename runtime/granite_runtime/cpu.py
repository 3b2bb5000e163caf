"""CPU-specific preparation: linear layers with weights pre-packed for oneDNN (mkldnn).

On this workplace's CPUs a batch-1 decode step is a long series of matrix-vector products
that must stream every weight from memory. PyTorch's default path (MKL sgemv) reaches about
9-10 GB/s on the real layer shapes with 2 threads; oneDNN with weights re-laid out once
reaches 15-17 GB/s (bench/NOTES.md). The product is the same (fp32 accumulation), so outputs
agree with the plain path to ~1e-6 relative.

The packed op (`mkldnn._linear_pointwise`, the one inductor uses for frozen CPU graphs) takes
a dense input and returns a dense output, so no layout conversion runs per call.
"""

from __future__ import annotations

import torch
from torch import nn


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
            if not (
                isinstance(child, nn.Linear)
                and child.weight.device.type == "cpu"
                and child.weight.dtype == torch.float32
            ):
                continue
            try:
                with torch.no_grad():
                    packed = PackedLinear(child)
            except RuntimeError:  # this CPU or build has no oneDNN kernel for it
                return swapped
            setattr(module, name, packed)
            swapped += 1
    return swapped
