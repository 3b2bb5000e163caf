"""Programmatic dependent launch (Hopper and later): the next kernel of a decode step starts
while this one drains, and fetches its weights before the activations it needs exist.

A batch-1 decode step is ~300 kernels in a CUDA graph, each streaming a few MB of weights.
Every kernel ends with a tail in which its last programs finish while HBM sits partly idle,
and the next kernel's programs are only launched after that tail and a memory flush. With
programmatic dependent launch (cudaLaunchAttributeProgrammaticStreamSerialization, Triton's
`launch_pdl`), a kernel's programs may be placed on the SMs as soon as every program of the
kernel before it has called `griddepcontrol.launch_dependents`; they then wait in
`griddepcontrol.wait` until that kernel has completed and its writes are visible.

The contract each kernel launched this way keeps (`wait_for_previous`):
- when its programs run, every kernel but the one just before it has completed (that one
  released it only after its own wait). So before the wait a kernel may read what that
  kernel cannot be writing: weights (never written while a graph runs) and the state pools
  only this kernel touches in a step (the conv window, the SSM state: LaunchOptions.early_state);
- before the wait it writes nothing but such a pool of its own: any other buffer may be one
  the kernel before it still reads, since the caching allocator hands a freed buffer to the
  next allocation in stream order;
- every program waits, unconditionally: a kernel that completed without waiting could let
  the kernel after it run ahead of the kernel before it;
- it lets the next kernel launch only after its own wait, so at most one kernel runs ahead.
What is read early, measured on an H200 (bench/NOTES.md): each fused product's first block
of weight rows (LaunchOptions.preload: h-micro 423.7 -> 443.2 tok/s); the
MoE down kernel its experts' rows, ranking the router's logits from the kernel two back
(LaunchOptions.down_early: h-tiny 685.4 -> 733.0); the state kernels their pools
(LaunchOptions.early_state). An L2 prefetch instruction per 128-byte line instead made h-tiny's
step 1.5x slower.

The launch attribute is set where `options` says so: a CUDA device of compute capability 9
or later, not the Triton interpreter, and the choice's `LaunchOptions.pdl` (off with
GKIT_PDL=0, for a driver that mishandles it; a benchmark turns it off to measure it).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

try:  # Triton 3.3 and later
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older Triton: `options` never turns it on
    gdc_launch_dependents = gdc_wait = None

_CAPABLE: dict[int, bool] = {}


def options(t: torch.Tensor, enabled: bool = True) -> dict:
    """Launch keywords for a decode kernel on t's device: {"PDL": constexpr flag, and
    "launch_pdl": True where it is on}."""
    if not (enabled and t.is_cuda and gdc_wait is not None):
        return {"PDL": False}
    if os.environ.get("TRITON_INTERPRET") == "1":
        return {"PDL": False}
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if index not in _CAPABLE:
        _CAPABLE[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return {"PDL": True, "launch_pdl": True} if _CAPABLE[index] else {"PDL": False}


@triton.jit
def wait_for_previous(PDL: tl.constexpr):
    """Block until the kernel before this one has completed (its writes visible), then let
    the kernel after this one launch. A no-op without PDL.

    Releasing the next kernel only near the end instead (so its early reads fall into this
    kernel's tail) measured slower: h-micro 443 -> 415 tok/s with the preload,
    h-tiny 588 -> 563 with only the experts releasing late (bench/NOTES.md)."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
