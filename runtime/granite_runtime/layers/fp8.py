"""FP8 weights (`--dtype fp8`): linear layers stored as float8 e4m3 with one scale per output
channel, multiplied by `torch._scaled_mm` on FP8 tensor cores (Hopper, Ada).

Each weight row is scaled so its largest magnitude maps to e4m3's largest finite value
(448). Decode (at most 16 rows) runs kernels/triton/decode.fp8_matvec: weight-only fp8, the weight
widened to bf16 in registers, the activations as they are; it reads half the bytes of bf16,
which is what matters when decode is bound by memory bandwidth. Prefill runs
`torch._scaled_mm` on the FP8 tensor cores, with activations quantized per token the same
way; the product accumulates in fp32 and comes out in bf16 with both scales applied.

MoE experts are stored the same way (e4m3, a scale per output row of each expert) and
dequantized to bf16 as they are gathered for a step: the gather reads half the bytes; the
product itself runs in bf16 (`_scaled_mm` has no batched or grouped form to take them).

Kept in bf16: embeddings and lm_head (the vocabulary projection is the most sensitive to
rounding), norms, the Mamba conv and per-head parameters, the MoE router. The accuracy
against bf16 is printed by bench/gpu_bench.py --fp8.
"""

from __future__ import annotations

import torch
from torch import nn

from granite_runtime.kernels.choice import PYTORCH, KernelChoice
from granite_runtime.layers.linear import DecodeLinear, Weight

E4M3_MAX = 448.0
# Hopper (9.0) and Ada (8.9) have FP8 tensor cores; `_scaled_mm` refuses older GPUs.
MIN_CAPABILITY = (8, 9)
# Decode's rows (activations stay bf16, the kernel reads the e4m3 weight once); more rows
# quantize the activations too and run `_scaled_mm`
MATVEC_MAX_ROWS = 16


def supported(device: torch.device | str) -> bool:
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= MIN_CAPABILITY


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / scale) in e4m3 and the fp32 scale per row (shape (rows, 1))."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


class Fp8Linear(nn.Module):
    """y = x W^T + b with W in e4m3 and a per-output-channel scale."""

    kernels: KernelChoice = PYTORCH

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = _quantize_rows(linear.weight.detach())
        self.register_buffer("weight_fp8", weight)
        self.register_buffer("weight_scale", scale.view(1, -1).contiguous())  # (1, out)
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.kernels.triton and flat.shape[0] <= MATVEC_MAX_ROWS:  # weight-only fp8
            y = self.kernels.ops.decode.fp8_matvec(
                flat, self.weight_fp8, self.weight_scale.view(-1), self.bias
            )
            return y.view(*shape[:-1], self.out_features)
        xq, x_scale = _quantize_rows(flat)
        y = torch._scaled_mm(
            xq,
            self.weight_fp8.t(),  # (in, out), column-major as _scaled_mm wants
            scale_a=x_scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=torch.bfloat16,
        )
        return y.view(*shape[:-1], self.out_features)


class Fp8Weight(nn.Module):
    """An MoE expert stack (experts, out, in) in e4m3 with a scale per (expert, out) row."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        q, scale = _quantize_rows(weight.detach())
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", scale)  # (experts, out, 1)

    def rows(self, index) -> torch.Tensor:
        return (self.weight_fp8[index].float() * self.weight_scale[index]).to(torch.bfloat16)


def _eligible(name: str, module: nn.Module) -> bool:
    # _scaled_mm needs both matrix dimensions divisible by 16
    return (
        isinstance(module, nn.Linear | DecodeLinear)  # before or after a choice was applied
        and name != "lm_head"
        and not name.endswith("router.layer")
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def quantize_linears(model: nn.Module) -> int:
    """Replace eligible linears (and MoE expert stacks) in place; returns how many."""
    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if _eligible(full, child):
                setattr(parent, name, Fp8Linear(child))
            elif isinstance(child, Weight) and "block_sparse_moe" in full:
                setattr(parent, name, Fp8Weight(child.weight))
            else:
                continue
            swapped += 1
    return swapped
