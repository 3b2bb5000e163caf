"""How the Triton decode kernels launch: the measured defaults, and the switches a benchmark
turns to compare against them. Pure data (no Triton import): a KernelChoice carries one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    # programmatic dependent launch on Hopper and later (pdl.py); GKIT_PDL=0 turns it off
    # for a driver that mishandles it
    pdl: bool = True
    # fused_linear's programs ask for their first block of weight rows before the wait
    # (h-micro 423.8 -> 443.4 tok/s on an H200, bench/NOTES.md)
    preload: bool = True
    # the conv and SSM state kernels read their pools before the wait (pdl.py's contract)
    early_state: bool = True
    # the MoE down kernel asks for its experts' rows before its wait (h-tiny 685 -> 733)
    down_early: bool = True
    # forced block shapes: fused_linear's (rows, programs/SM, warps, stages) and the MoE
    # kernels' (moe.CONFIG's layout); None keeps the measured tables
    linear_blocks: tuple[int, int, int, int] | None = None
    moe_blocks: tuple[int, ...] | None = None


DEFAULT = LaunchOptions()
