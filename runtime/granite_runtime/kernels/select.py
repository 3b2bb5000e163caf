"""Resolving a KernelChoice for a device and dtype, and applying it to a model.

`resolve` is called once, when the model is loaded (model/loader.py): it asks what this
device, this torch and the environment offer (a C compiler, Triton, torch._grouped_mm on
Hopper, GKIT_TRITON=0 and GKIT_PDL=0 to turn Triton or programmatic launch off,
GKIT_FLASH_CHUNKS=0 to keep the chunk graphs attending as one-token rows) and never again.
`apply` swaps decode-sized linears in and gives every layer the choice."""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from granite_runtime.kernels.choice import KernelChoice
from granite_runtime.kernels.cpu import ops as cpu_ops
from granite_runtime.kernels.triton.options import LaunchOptions
from granite_runtime.layers.linear import DecodeLinear, swap_linears
from granite_runtime.layers.moe import grouped_mm_runs


def resolve(
    device: torch.device | str, dtype: torch.dtype, world: int = 1, **overrides
) -> KernelChoice:
    """The fastest kernels measured for `device` and `dtype` that are present here; a model
    split over `world` ranks keeps the one-row fusions off (their norms would need sums
    across ranks). `overrides` replace fields (a benchmark's or a test's comparison)."""
    device = torch.device(device)
    grouped = grouped_mm_runs(device, dtype)
    if device.type == "cuda" and os.environ.get("GKIT_TRITON", "1") != "0" and _has_triton():
        choice = KernelChoice(
            triton=True,
            triton_scan=True,
            fused_linear=world == 1,
            fused_attention=world == 1,
            grouped_mm=grouped,
            chunk_attention=os.environ.get("GKIT_FLASH_CHUNKS", "1") != "0",
            launch=LaunchOptions(pdl=os.environ.get("GKIT_PDL", "1") != "0"),
        )
    elif device.type == "cpu":
        choice = KernelChoice(c_decode=cpu_ops.available(), grouped_mm=grouped)
    else:
        choice = KernelChoice(grouped_mm=grouped)
    return dataclasses.replace(choice, **overrides)


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:  # CPU builds of torch
        return False
    return True


def apply(model: nn.Module, choice: KernelChoice) -> KernelChoice:
    """Give every layer of `model` this choice (and `model.kernels` says which it holds).
    With Triton, CUDA linears become DecodeLinear first, so few-row products may take the
    GEMV; on the CPU, kernels/cpu/prepare.py swaps in the linears the C kernels take."""
    on_cuda = any(p.is_cuda for p in model.parameters())
    if choice.triton and on_cuda:  # few-row products may take the Triton GEMV
        swap_linears(model, DecodeLinear, lambda linear: True)
    for module in model.modules():
        if hasattr(type(module), "kernels"):
            module.kernels = choice
    model.kernels = choice
    return choice
