"""RMSNorm as Granite computes it: in fp32, the weight applied after casting back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from granite_runtime.kernels.choice import PYTORCH, KernelChoice
from granite_runtime.kernels.cpu import ops as cpu_ops
from granite_runtime.layers.linear import c_kernel_takes
from granite_runtime.parallel import tp


class RMSNorm(nn.Module):
    kernels: KernelChoice = PYTORCH

    def __init__(self, size: int, eps: float, groups: int = 1, across_ranks: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps, self.groups = eps, groups
        # Tensor parallelism with one Mamba group: each rank holds part of the normed
        # vector, so the sum of squares is all-reduced (parallel/tp.py).
        self.across_ranks = across_ranks

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        if gate is None and self.groups == 1 and c_kernel_takes(self.kernels, x, self.weight):
            return cpu_ops.add_rms_norm(x, None, 1.0, self.weight, self.eps)
        dtype = x.dtype
        h = x.float()
        if gate is not None:
            h = h * F.silu(gate.float())
        if self.across_ranks:
            squares = tp.all_reduce(h.pow(2).sum(-1, keepdim=True))
            h = h * torch.rsqrt(squares / (h.shape[-1] * tp.world_size()) + self.eps)
        elif self.groups == 1:
            h = F.rms_norm(h, (h.shape[-1],), eps=self.eps)
        else:
            h = F.rms_norm(
                h.unflatten(-1, (self.groups, -1)), (h.shape[-1] // self.groups,), eps=self.eps
            ).flatten(-2)
        return self.weight * h.to(dtype)

    def add_forward(
        self, x: torch.Tensor, delta: torch.Tensor, alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + alpha * delta, this norm of it): the residual add before every norm. On the
        C kernel path the add happens in place in x, which the caller owns."""
        k = self.kernels
        if self.groups == 1 and c_kernel_takes(k, x, delta, self.weight):
            return x, cpu_ops.add_rms_norm(x, delta, alpha, self.weight, self.eps)
        if self.groups == 1 and not self.across_ranks and k.triton:
            return k.ops.fused.add_rms_norm(x, delta, alpha, self.weight, self.eps, launch=k.launch)
        x = torch.add(x, delta, alpha=alpha)
        return x, self(x)
