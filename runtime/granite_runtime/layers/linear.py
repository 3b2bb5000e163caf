"""Linear layers for inference: decode-sized inputs on the kernels their choice names, and
the module swaps that put them in place before the model runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from granite_runtime.kernels.choice import PYTORCH, KernelChoice
from granite_runtime.kernels.cpu import ops as cpu_ops

# Decode-sized calls (a few rows) go to the C kernels on the CPU; prefill stays on PyTorch's
# GEMMs, which are compute-bound and already fast.
CPU_KERNEL_MAX_ROWS = 8


def c_kernel_takes(kernels: KernelChoice, x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether this call (x and the tensors beside it) runs on the C decode kernels."""
    return (
        kernels.c_decode
        and x.device.type == "cpu"
        and x.numel() <= CPU_KERNEL_MAX_ROWS * x.shape[-1]
        and cpu_ops.accepts(x, *others)
    )


class DecodeLinear(nn.Module):
    """nn.Linear for inference with a path for decode-sized inputs: on the CPU a few rows go
    to the C matrix-vector kernel (one pass over the weight at the read bandwidth), on CUDA
    to the Triton GEMV where it measured faster than cuBLAS (kernels/triton/gemv.py); more
    rows to PyTorch's GEMM. Same parameter names as nn.Linear, so state dicts still match."""

    kernels: KernelChoice = PYTORCH

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernels
        if c_kernel_takes(k, x, self.weight) and (self.bias is None or cpu_ops.accepts(self.bias)):
            return cpu_ops.linear(x, self.weight, self.bias)
        if k.triton and k.ops.gemv.applies(x, self.weight, self.bias):
            return k.ops.gemv.linear(x, self.weight)
        return F.linear(x, self.weight, self.bias)


def swap_linears(model: nn.Module, wrapper: type[nn.Module], accept) -> int:
    """Replace each nn.Linear child for which accept(child) holds by wrapper(child)."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and accept(child):
                setattr(module, name, wrapper(child))
                swapped += 1
    return swapped


class Weight(nn.Module):
    """A bare weight under a module name, so names match the checkpoint (`x.weight`)."""

    def __init__(self, *shape: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape))

    def rows(self, index) -> torch.Tensor:
        """weight[index] in the compute dtype (fp8.Fp8Weight dequantizes here)."""
        return self.weight[index]


def one_row_fused(kernels: KernelChoice, x: torch.Tensor, *linears: nn.Module) -> bool:
    """Whether x (one token) and these linears take kernels/triton/fused_linear.py: one row,
    bf16/fp16 weights of x's dtype without bias, one rank (under tensor parallelism the norms
    need sums across ranks: parallel/tp.py turns fused_linear off in its choice)."""
    return (
        kernels.triton
        and kernels.fused_linear
        and x.numel() == x.shape[-1]  # first: prefill chunks leave at once
        # fp8.Fp8Linear holds `weight_fp8` and keeps its own matrix-vector kernel
        and all(isinstance(getattr(m, "weight", None), torch.Tensor) for m in linears)
        and all(getattr(m, "bias", None) is None for m in linears)
        and kernels.ops.fused_linear.applies(x, *(m.weight for m in linears))
    )
