"""Whether prompt chunks can run beside decode steps instead of inside them: a decode graph
on a high-priority CUDA stream and a chunk graph on a low-priority one, replayed at once.

Prints, per decode batch: the decode step alone, a chunk alone, then both together: the
decode step's p50/p99 latency (as the engine sees it: replay, then wait for its stream) and
the prompt tokens/s the chunks keep meanwhile. The graphs use separate memory pools, as
concurrent graphs must. If the decode step stays under 2x its idle time while prefill keeps
most of its rate, moving chunks off the decode step's stream is worth building.

Run on the device: python bench/prefill_overlap.py --model granite-4.0-h-micro
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "runtime"), str(HERE.parent)]

import torch  # noqa: E402
from common import checkpoint, pct, timed  # noqa: E402

from granite_runtime.engine.cache import HybridCache  # noqa: E402
from granite_runtime.engine.chunk_graphs import GraphedChunks  # noqa: E402
from granite_runtime.engine.graphs import GraphedDecoder  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402


def together(decode, chunk, fast, slow, chunks: int, ahead: int):
    """Step decode on `fast` while `chunks` chunk replays run on `slow`, at most `ahead` of
    them queued at a time and topped up before every step, as the engine's prefill stream
    does (engine/prefill_stream.py QUEUED_CHUNKS). Returns the decode steps' latencies, the
    wall time until the last chunk ends, and the host time spent queueing chunks (a launch
    queue that fills blocks the host there, and every decode step waits behind it)."""
    torch.cuda.synchronize()
    began = time.perf_counter()
    queued, left, steps, queueing = [], chunks, [], 0.0
    while left or queued:
        queued = [e for e in queued if not e.query()]
        t = time.perf_counter()
        with torch.cuda.stream(slow):
            while left and len(queued) < ahead:
                chunk()
                queued.append(torch.cuda.Event())
                queued[-1].record(slow)
                left -= 1
        queueing += time.perf_counter() - t
        t = time.perf_counter()
        with torch.cuda.stream(fast):
            decode()
        fast.synchronize()
        steps.append(time.perf_counter() - t)
    return steps, time.perf_counter() - began, queueing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="granite-4.0-h-micro")
    ap.add_argument("--root", default="/tmp/gkit-models")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--lengths", default="512,2048")
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--ahead", type=int, default=4, help="chunks queued at a time")
    args = ap.parse_args()
    model = load_model(checkpoint(args.model, Path(args.root)), "bfloat16", "cuda")
    batches = [int(b) for b in args.batches.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    prefill_slot = max(batches)
    cache = HybridCache(model.config, prefill_slot + 1, 4096, torch.bfloat16, "cuda")
    low, high = torch.cuda.Stream.priority_range()
    fast, slow = torch.cuda.Stream(priority=high), torch.cuda.Stream(priority=low)
    print(f"{torch.cuda.get_device_name()}, {args.model}, stream priorities {low}..{high}")
    with torch.inference_mode():
        decoder = GraphedDecoder(model, cache, max(batches))
        decoder.capture(sorted(batches, reverse=True))
        chunked = GraphedChunks(model, cache, beside_decode=True)  # it runs beside decode
        chunked.capture(lengths)
        for n in lengths:
            tokens = torch.randint(100, 1000, (1, n), device="cuda")
            chunk = lambda t=tokens: chunked(t, prefill_slot, 0)  # noqa: E731
            alone_chunk = timed(chunk, 10)
            print(f"chunk {n}: alone {alone_chunk * 1e3:.2f} ms ({n / alone_chunk:,.0f} tok/s)")
            for b in batches:
                ids = torch.randint(100, 1000, (b, 1), device="cuda")
                slots, starts = list(range(b)), [512] * b
                decode = lambda i=ids, s=slots, p=starts: decoder(i, s, p)  # noqa: E731
                alone = []
                for _ in range(50):
                    t = time.perf_counter()
                    decode()
                    torch.cuda.synchronize()
                    alone.append(time.perf_counter() - t)
                steps, wall, queueing = together(decode, chunk, fast, slow, args.chunks, args.ahead)
                rate = args.chunks * n / wall
                print(
                    f"  decode b{b}: alone p50/p99 {pct(alone, 0.5) * 1e3:.2f}/"
                    f"{pct(alone, 0.99) * 1e3:.2f} ms; beside chunks p50/p99 "
                    f"{pct(steps, 0.5) * 1e3:.2f}/{pct(steps, 0.99) * 1e3:.2f} ms "
                    f"({pct(steps, 0.99) / pct(alone, 0.99):.2f}x); chunks meanwhile "
                    f"{rate:,.0f} tok/s ({rate * alone_chunk / n:.0%} of alone), "
                    f"{len(steps)} decode steps = {len(steps) * b / wall:,.0f} tok/s, "
                    f"{queueing / wall:.0%} of the wall spent queueing chunks",
                    flush=True,
                )


if __name__ == "__main__":
    main()
