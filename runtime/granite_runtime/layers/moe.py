"""Granite's MLPs: the shared SwiGLU and the sparse mixture of experts (router softmax over
the top-k logits only, as transformers' GraniteMoeHybrid)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from granite_runtime.kernels.choice import PYTORCH, KernelChoice
from granite_runtime.layers.linear import Weight
from granite_runtime.spec.config import GraniteConfig

# At most this many token copies (tokens x top_k) gather their experts' weights; more go
# through the grouped GEMM (or the loop over experts)
GATHER_MAX_COPIES = 64


class SwiGLU(nn.Module):
    """Granite's shared MLP: input_linear -> (gate, up) -> silu(gate) * up -> output_linear."""

    kernels: KernelChoice = PYTORCH

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.input_linear = nn.Linear(hidden, 2 * inner, bias=False)
        self.output_linear = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.input_linear(x)
        if self.kernels.triton:
            act = self.kernels.ops.fused.silu_mul(gate_up, launch=self.kernels.launch)
            return self.output_linear(act)
        gate, up = gate_up.chunk(2, dim=-1)
        return self.output_linear(F.silu(gate) * up)


class MoE(nn.Module):
    kernels: KernelChoice = PYTORCH

    def __init__(self, config: GraniteConfig):
        super().__init__()
        e, h, i = config.num_experts, config.hidden_size, config.expert_size
        self.top_k = config.top_k
        self.router = nn.Module()
        self.router.layer = nn.Linear(h, e, bias=False)
        self.input_linear = Weight(e, 2 * i, h)
        self.output_linear = Weight(e, h, i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        k = self.kernels
        decode = flat.shape[0] * self.top_k <= GATHER_MAX_COPIES
        # one token on one GPU usually takes model.granite.DecoderLayer's one-row MLP
        # instead: the router, the shared MLP and the experts in 3 kernels
        if decode and self.reads_experts_in_place(flat):  # 4 kernels (kernels/triton/moe.py)
            experts, weights = k.ops.moe.route(
                flat, self.router.layer.weight, self.top_k, launch=k.launch
            )
            out = k.ops.moe.moe_decode(
                flat, experts, weights, self.input_linear.weight, self.output_linear.weight,
                launch=k.launch,
            )  # fmt: skip
            return out.view(shape)
        logits = self.router.layer(flat).float()
        top_logits, experts = logits.topk(self.top_k, dim=-1)
        weights = torch.softmax(top_logits, dim=-1).to(flat.dtype)
        if decode:
            out = self._gathered(flat, experts, weights)
        elif self.grouped_mm:
            out = self._grouped_mm(flat, experts, weights)
        else:
            out = self._looped(flat, experts, weights)
        return out.view(shape)

    def reads_experts_in_place(self, x: torch.Tensor) -> bool:
        """Decode's experts read in place by kernels/triton/moe.py (bf16/fp16/fp32 stacks;
        fp8.Fp8Weight stacks keep the gather, which dequantizes)."""
        stack = self.input_linear
        return self.kernels.triton and type(stack) is Weight and stack.weight.dtype == x.dtype

    @property
    def grouped_mm(self) -> bool:
        """Many-token steps through torch._grouped_mm: where the choice found it runs, on
        plain expert stacks (fp8 stacks keep the loop, which dequantizes per expert)."""
        return self.kernels.grouped_mm and isinstance(self.input_linear, Weight)

    def _gathered(self, flat, experts, weights):
        """Few tokens (decode): gather each token's k experts and run them as one bmm."""
        t, k = experts.shape
        w1 = self.input_linear.rows(experts.reshape(-1))  # (t*k, 2i, h)
        w2 = self.output_linear.rows(experts.reshape(-1))  # (t*k, h, i)
        xs = flat.repeat_interleave(k, dim=0).unsqueeze(-1)  # (t*k, h, 1)
        gate, up = torch.bmm(w1, xs).squeeze(-1).chunk(2, dim=-1)
        y = torch.bmm(w2, (F.silu(gate) * up).unsqueeze(-1)).squeeze(-1)  # (t*k, h)
        return (y.view(t, k, -1) * weights.unsqueeze(-1)).sum(dim=1)

    def _looped(self, flat, experts, weights):
        """Many tokens: sort token copies by expert and run each expert once."""
        out = torch.zeros_like(flat)
        order = experts.reshape(-1).argsort(stable=True)
        counts = torch.bincount(experts.reshape(-1), minlength=self.router.layer.out_features)
        token_of = order // self.top_k
        start = 0
        for e, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            idx = order[start : start + count]
            tokens = token_of[start : start + count]
            start += count
            gate, up = F.linear(flat[tokens], self.input_linear.rows(e)).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.output_linear.rows(e))
            out.index_add_(0, tokens, y * weights.reshape(-1)[idx, None])
        return out

    def _grouped_mm(self, flat, experts, weights):
        """The same with one grouped GEMM per projection (`torch._grouped_mm`): no loop over
        experts, no host sync, fixed shapes, so decode steps of any batch size are graphed
        through it (engine/graphs.py). Token copies are sorted by expert, the products run
        group by group, and the copies go back to (token, k) order before the weighted sum,
        so the sum's order is fixed (no atomics)."""
        t, k = experts.shape
        flat_experts = experts.reshape(-1)
        order = flat_experts.argsort(stable=True)
        # counts by scatter, not bincount: bincount reads the largest id back to the host to
        # size its output, which a CUDA graph cannot capture; this shape is fixed (E,)
        counts = torch.zeros(self.router.layer.out_features, dtype=torch.int32, device=flat.device)
        counts.scatter_add_(0, flat_experts, torch.ones_like(flat_experts, dtype=torch.int32))
        offsets = counts.cumsum(0, dtype=torch.int32)
        w1, w2 = self.input_linear.weight, self.output_linear.weight  # (E, 2i, h), (E, h, i)
        # each intermediate is dropped as soon as the next exists: at most two (t*k, h)
        # tensors are alive, which is what spec/memory.activation_bytes counts for MoE
        gate_up = torch._grouped_mm(flat[order // k], w1.transpose(-2, -1), offs=offsets)
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate) * up
        del gate_up, gate, up
        y = torch._grouped_mm(act, w2.transpose(-2, -1), offs=offsets)
        del act
        unsorted = torch.empty_like(y)
        unsorted[order] = y
        del y
        # (t, 1, k) @ (t, k, h): the weighted sum over each token's k experts, in k order
        return torch.bmm(weights.unsqueeze(1), unsorted.view(t, k, -1)).squeeze(1)


def graph_safe_moe(model: nn.Module) -> bool:
    """Whether every MoE layer runs many-token steps through torch._grouped_mm, whose
    shapes and launches are fixed (a CUDA graph can hold them at any batch size)."""
    blocks = [m for m in model.modules() if isinstance(m, MoE)]
    return bool(blocks) and all(m.grouped_mm for m in blocks)


def grouped_mm_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch._grouped_mm runs here: on the CPU in any dtype, on CUDA in bf16 from
    Hopper on, and this torch accepts a small probe of the shapes MoE gives it (a torch
    whose kernel refuses them keeps the loop over experts)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if device.type == "cuda":
        if dtype != torch.bfloat16 or torch.cuda.get_device_capability(device) < (9, 0):
            return False
    elif device.type != "cpu":
        return False
    x = torch.zeros(4, 16, dtype=dtype, device=device)
    w = torch.zeros(2, 32, 16, dtype=dtype, device=device).transpose(-2, -1)  # as MoE passes
    try:
        torch._grouped_mm(x, w, offs=torch.tensor([1, 4], dtype=torch.int32, device=device))
    except RuntimeError:
        return False
    return True
