"""How prompts beside the decode steps share the GPU with them: knobs to measure, read once
at start-up.

Beside 2,048-token chunks an h-micro decode step took 2.3x its idle time on an H100 in round
20 and up to 6x once prefill's small kernels were fused (bench/NOTES.md round 21): a
stream's priority only orders blocks that wait for an SM, and the chunks' persistent GEMMs
hold every SM until they end. Each knob gives the decode stream a share of its own:

- `GKIT_PREFILL_FREE_SMS=N`: the chunk graphs' matrix products leave N SMs free (cuBLASLt's
  SM count target, read when a product is launched, so the graphs keep what capture saw);
  the Triton kernels still use every SM.
- `GKIT_PREFILL_GREEN_SMS=N`: the prefill stream is the stream of a green context of N SMs
  (torch.cuda.green_contexts), so everything the chunks run stays on those N.
- `GKIT_PREFILL_QUEUED_CHUNKS=N`: chunks queued ahead on the prefill stream (default
  QUEUED_CHUNKS), in case the decode steps' launches wait behind queued ones.

Defaults change nothing. bench/prefill_overlap.py and serve_bench.py --server-envs measure
them; one that wins becomes a default, and its flag, once measured served.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from granite_runtime.spec.errors import SettingError

# Prompt tokens queued ahead on the prefill stream, in chunks: enough to keep it busy
# between two looks (a step is a few ms; 4 chunks of 2,048 are ~100 ms of h-micro
# prefill), few enough that CUDA's launch queue never fills and blocks the host.
QUEUED_CHUNKS = 4


@dataclass(frozen=True)
class PrefillShare:
    free_sms: int = 0  # SMs the chunk graphs' GEMMs leave free
    green_sms: int = 0  # SMs of the prefill stream's green context (0: no green context)
    queued_chunks: int = QUEUED_CHUNKS


def _count(environ: Mapping[str, str], name: str, default: int, least: int, most: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not least <= int(raw) <= most:
        raise SettingError(f"{name} is {raw!r}; it takes a whole number from {least} to {most}.")
    return int(raw)


def share_from_env(environ: Mapping[str, str], sms: int) -> PrefillShare:
    """The knobs (module docstring) for a GPU of `sms` SMs: each must leave both streams at
    least one SM, and one sentence names the knob that does not."""
    return PrefillShare(
        free_sms=_count(environ, "GKIT_PREFILL_FREE_SMS", 0, 0, sms - 1),
        green_sms=_count(environ, "GKIT_PREFILL_GREEN_SMS", 0, 0, sms - 1),
        queued_chunks=_count(environ, "GKIT_PREFILL_QUEUED_CHUNKS", QUEUED_CHUNKS, 1, 64),
    )


@contextlib.contextmanager
def gemms_leaving_free(sms: int):
    """Matrix products launched (or captured) inside leave `sms` SMs free. The carve-out
    reaches cuBLASLt only (pytorch/pytorch#147966), so products go through it meanwhile."""
    if not sms:
        yield
        return
    blas = torch.backends.cuda.preferred_blas_library()
    try:
        torch._C._set_sm_carveout_experimental(sms)
        torch.backends.cuda.preferred_blas_library("cublaslt")
        yield
    finally:
        torch._C._set_sm_carveout_experimental(None)
        torch.backends.cuda.preferred_blas_library(blas)


def prefill_stream(device: torch.device, green_sms: int) -> tuple[torch.cuda.Stream, object]:
    """The stream prompts run on, and what must outlive it: a low-priority stream, or with
    `green_sms` the stream of a green context of that many SMs (the context returned, kept
    alive as long as its stream is used)."""
    if not green_sms:
        low, _ = torch.cuda.Stream.priority_range()
        return torch.cuda.Stream(device, priority=low), None
    from torch.cuda import green_contexts

    if not green_contexts.SUPPORTED:
        raise SettingError(
            "GKIT_PREFILL_GREEN_SMS is set, but this PyTorch was built without green contexts."
        )
    index = torch.cuda.current_device() if device.index is None else device.index
    context = green_contexts.GreenContext.create(num_sms=green_sms, device_id=index)
    return context.Stream(), context
