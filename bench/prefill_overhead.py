"""Where one prompt chunk's time goes on the GPU.

Eager: host-side ops (self CPU time) against device time, and how many kernels it launches
(a 448-token chunk of h-micro takes ~47 ms where its device work is a few ms: bench/NOTES.md,
the packed-step round).

`--starts`: the same chunk at each of these positions in its sequence, eagerly and through
its chunk graph (as the server runs it) several ways, each with the device time its
attention kernels take:
- rows: attention as one-token rows through the decode kernel (`GKIT_FLASH_CHUNKS=0`), so
  a chunk's attention reads grow with its start;
- blocks as in round 20: query blocks (kernels/triton/chunk_attention.py), the conv window
  moved by copying the whole chunk onto it, then gathering (`joined_window_after`), and
  the scan's dt and C.B laid out by PyTorch ops (`pytorch_chunk_dt`,
  `pytorch_chunk_products`): the peers of `fused.conv_window_after`, `scan.chunk_dt` and
  `scan._chunk_products`, a kernel each (the states now read at the pool's slots in all);
- blocks with only the window joined, then blocks as the runtime runs them;
- blocks with the scan's output written in bf16 (`bf16_scan_output`), which the runtime
  does not do.

Run on the device: python bench/prefill_overhead.py --model granite-4.0-h-micro --length 448
  python bench/prefill_overhead.py --length 2048 --starts 0,2048,8192,30720
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "runtime"), str(HERE.parent)]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import checkpoint, timed  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from granite_runtime.engine.batch import Batch  # noqa: E402
from granite_runtime.engine.cache import HybridCache  # noqa: E402
from granite_runtime.engine.chunk_graphs import GraphedChunks  # noqa: E402
from granite_runtime.kernels import select  # noqa: E402
from granite_runtime.kernels.triton import fused, scan  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402

_chunked_scan = scan.chunked_scan
# names of the attention kernels: the Triton decode kernel's, flash's, cuDNN's SDPA, fmha
ATTENTION_KERNELS = ("attention", "flash", "sdpa", "fmha")


def device_ms(call) -> tuple[float, float]:
    """Device time of one call (ms), and of its attention kernels within it."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    attention = [e for e in kernels if any(m in e.key.lower() for m in ATTENTION_KERNELS)]
    total = sum(e.self_device_time_total for e in kernels) / 1e3
    return total, sum(e.self_device_time_total for e in attention) / 1e3


def joined_window_after(x, conv_pool, slots, lengths=None) -> None:
    """`fused.conv_window_after` as the PyTorch ops the runtime ran up to round 20 (the
    rows' windows gathered, the whole chunk copied onto them, the new windows gathered from
    that and scattered back): its peer here."""
    past = conv_pool[slots]
    full = torch.cat([past.to(x.dtype), x.transpose(1, 2)], dim=-1)
    ends = lengths[:, None] + torch.arange(past.shape[-1], device=x.device)
    window = full.gather(-1, ends[:, None, :].expand(-1, full.shape[1], -1))
    conv_pool[slots] = window.to(conv_pool.dtype)


def pytorch_chunk_dt(dt, A, chunk, dt_bias=None, dt_limit=(0.0, float("inf")), lengths=None):
    """`scan.chunk_dt` as the PyTorch ops the runtime ran up to round 20 (softplus, clamp,
    the padding zeroed, padded to whole chunks, the cumulative sum): its peer here."""
    b, length, h = dt.shape
    dt = dt.float()
    if dt_bias is not None:
        dt = F.softplus(dt + dt_bias).clamp(*dt_limit)
    if lengths is not None:
        dt = dt * (torch.arange(length, device=dt.device) < lengths[:, None])[..., None]
    dt = F.pad(dt, (0, 0, 0, (-length) % chunk)).view(b, -1, chunk, h).permute(0, 3, 1, 2)
    cum = (dt * A.float().view(1, h, 1, 1)).cumsum(-1)
    return dt.contiguous(), cum.contiguous()


def pytorch_chunk_products(Cm, Bm, chunk):
    """`scan._chunk_products` as the PyTorch ops of round 20 (casts, padding, an fp32
    product): its peer here."""
    b, length, g, n = Cm.shape

    def per_chunk(t):
        pad = (0, 0, 0, 0, 0, (-length) % chunk)
        return F.pad(t.float(), pad).view(b, -1, chunk, g, n).transpose(2, 3)

    return torch.matmul(per_chunk(Cm), per_chunk(Bm).transpose(-1, -2)).contiguous()


def bf16_scan_output(*args, **kwargs):
    """The chunked scan writing y in bf16, as mamba_ssm's does (the runtime keeps fp32 for
    the gated norm, as transformers' PyTorch path does): what halving that traffic gives."""
    return _chunked_scan(*args, **kwargs, out_dtype=torch.bfloat16)


def capture(model, cache, length: int, block: bool, swaps=()) -> GraphedChunks:
    """A chunk graph of `length`, attending as blocks or rows (baked in at capture), with
    each (owner, name, value) of `swaps` in place while it is captured."""
    select.apply(model, dataclasses.replace(model.kernels, chunk_attention=block))
    kept = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    for owner, name, value in swaps:
        setattr(owner, name, value)
    try:
        graphs = GraphedChunks(model, cache)
        graphs.capture([length])
    finally:
        for owner, name, value in kept:
            setattr(owner, name, value)
    return graphs


def by_start(model, length: int, starts: list[int]) -> None:
    """The chunk at each start: its graph's replay, attending as one-token rows and as
    query blocks (kernels/triton/chunk_attention.py), against the eager chunk."""
    cache = HybridCache(model.config, 2, max(starts) + length, torch.bfloat16, "cuda")
    tokens = torch.randint(100, 1000, (1, length), device="cuda")
    with torch.inference_mode():
        model(tokens, Batch.make([0], [0], "cuda"), cache)  # Triton compiles and tunes here
        joined = (fused, "conv_window_after", joined_window_after)
        pytorch_scan = [
            (scan, "chunk_dt", pytorch_chunk_dt),
            (scan, "_chunk_products", pytorch_chunk_products),
        ]
        graphs = {
            "rows": capture(model, cache, length, False),
            "blocks as in round 20": capture(model, cache, length, True, [joined, *pytorch_scan]),
            "blocks, joined window": capture(model, cache, length, True, [joined]),
            "blocks": capture(model, cache, length, True),
            "blocks, bf16 scan output": capture(
                model, cache, length, True, [(scan, "chunked_scan", bf16_scan_output)]
            ),
        }
        for start in starts:
            eager = lambda s=start: model(tokens, Batch.make([0], [s], "cuda"), cache)  # noqa: E731
            e_total, e_attn = device_ms(eager)
            line = [f"start {start:>6}: eager device {e_total:.2f} ms, attention {e_attn:.2f} ms"]
            for way, chunked in graphs.items():
                replay = lambda s=start, g=chunked: g(tokens, 0, s)  # noqa: E731
                wall = 1e3 * timed(replay, 5)
                total, attn = device_ms(replay)
                line.append(
                    f"graph ({way}) {wall:.2f} ms a replay ({1e3 * length / wall:,.0f} tok/s), "
                    f"attention {attn:.2f} ms of its {total:.2f} ms on the device"
                )
            print("; ".join(line), flush=True)
        # where the rest of a replay goes: the kernels of the first start's, by device time
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            graphs["blocks"](tokens, 0, starts[0])
            torch.cuda.synchronize()
        averages = prof.key_averages()
        print(
            averages.table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=70)
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="granite-4.0-h-micro")
    ap.add_argument("--root", default="/tmp/gkit-models")
    ap.add_argument("--length", type=int, default=448)
    ap.add_argument("--starts", default="", help="comma-separated positions (module doc)")
    args = ap.parse_args()
    model = load_model(checkpoint(args.model, Path(args.root)), "bfloat16", "cuda")
    if args.starts:
        return by_start(model, args.length, [int(v) for v in args.starts.split(",")])
    cache = HybridCache(model.config, 2, 4096, torch.bfloat16, "cuda")
    tokens = torch.randint(100, 1000, (1, args.length), device="cuda")
    with torch.inference_mode():
        call = lambda: model(tokens, Batch.make([0], [0], "cuda"), cache)  # noqa: E731
        print(f"{torch.cuda.get_device_name()}: {args.length} tokens, "
              f"{1e3 * timed(call, 5):.2f} ms a call", flush=True)  # fmt: skip
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sum(e.count for e in events if e.device_type.name == "CUDA")
    device_ms = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    print(f"kernels launched: {kernels}, device time {device_ms / 1e3:.2f} ms", flush=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=50))


if __name__ == "__main__":
    main()
