"""Whether prompt chunks can run beside decode steps instead of inside them: a decode graph
on a high-priority CUDA stream and a chunk graph on a low-priority one, replayed at once.

Prints, per decode batch: the decode step alone, a chunk alone, then both together: the
decode step's p50/p99 latency (as the engine sees it: replay, then wait for its stream) and
the prompt tokens/s the chunks keep meanwhile. The graphs use separate memory pools, as
concurrent graphs must. If the decode step stays under 2x its idle time while prefill keeps
most of its rate, moving chunks off the decode step's stream is worth building.
`--sm-carveouts` captures the chunk graphs again for each count of SMs their GEMMs leave
free (carved_chunk_graphs), to see whether the decode step's slowdown beside them is
Hopper's persistent GEMMs holding every SM (on an H100, 32 SMs left free cut it only from
2.15x to 2.05x: bench/NOTES.md round 19). `--green-sms` runs the chunks instead on the
stream of a green context holding that many SMs (torch.cuda.green_contexts), so the rest
stay free for the decode step, Triton kernels included; 0 keeps the whole GPU. Once
prefill's small kernels were fused (round 21) a served stream's ITL beside chunks rose to
2.9-6.1x its idle value: this is the partition to measure against that.

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
from granite_runtime.engine.prefill_share import gemms_leaving_free, prefill_stream  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402


def together(decode, chunk, fast, slow, chunks: int, ahead: int):
    """Step decode on `fast` while `chunks` chunk replays run on `slow`, at most `ahead` of
    them queued at a time and topped up before every step, as the engine's prefill stream
    does (engine/prefill_share.py QUEUED_CHUNKS). Returns the decode steps' latencies, the
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


def carved_chunk_graphs(model, cache, lengths, carveout: int) -> GraphedChunks:
    """Chunk graphs whose matrix products leave `carveout` SMs free, as the engine captures
    them with GKIT_PREFILL_FREE_SMS. Hopper's cuBLAS GEMMs are persistent (one block per
    SM, each running many tiles): a stream priority cannot move a decode kernel ahead of
    blocks that never end, so it waits for the whole GEMM."""
    with gemms_leaving_free(carveout):
        chunked = GraphedChunks(model, cache, beside_decode=True)  # it runs beside decode
        chunked.capture(lengths)
    return chunked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="granite-4.0-h-micro")
    ap.add_argument("--root", default="/tmp/gkit-models")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--lengths", default="512,2048")
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--ahead", type=int, default=4, help="chunks queued at a time")
    ap.add_argument(
        "--sm-carveouts", default="0", help="SMs the chunks' GEMMs leave free, e.g. 0,16,32"
    )
    ap.add_argument(
        "--green-sms", default="0", help="SMs of the chunks' green context (0: all), e.g. 0,100"
    )
    args = ap.parse_args()
    model = load_model(checkpoint(args.model, Path(args.root)), "bfloat16", "cuda")
    batches = [int(b) for b in args.batches.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    prefill_slot = max(batches)
    cache = HybridCache(model.config, prefill_slot + 1, 4096, torch.bfloat16, "cuda")
    low, high = torch.cuda.Stream.priority_range()
    fast, slow = torch.cuda.Stream(priority=high), torch.cuda.Stream(priority=low)
    sms = torch.cuda.get_device_properties().multi_processor_count
    print(
        f"{torch.cuda.get_device_name()} ({sms} SMs), torch {torch.__version__}, {args.model}, "
        f"stream priorities {low}..{high}"
    )
    with torch.inference_mode():
        decoder = GraphedDecoder(model, cache, max(batches))
        decoder.capture(sorted(batches, reverse=True))
        for carveout in [int(c) for c in args.sm_carveouts.split(",")]:
            chunked = carved_chunk_graphs(model, cache, lengths, carveout)
            for n in lengths:
                tokens = torch.randint(100, 1000, (1, n), device="cuda")
                chunk = lambda t=tokens, g=chunked: g(t, prefill_slot, 0)  # noqa: E731
                alone_chunk = timed(chunk, 10)
                print(
                    f"chunk {n}, {carveout} SMs left free: alone {alone_chunk * 1e3:.2f} ms "
                    f"({n / alone_chunk:,.0f} tok/s)"
                )
                for green in [int(g) for g in args.green_sms.split(",")]:
                    # the engine's prefill stream with GKIT_PREFILL_GREEN_SMS=green
                    stream, _context = (
                        (slow, None) if not green else prefill_stream(torch.device("cuda"), green)
                    )
                    if green:  # the chunk alone on its share of the SMs
                        with torch.cuda.stream(stream):
                            print(f" in a green context of {green} SMs: chunk alone "
                                  f"{timed(chunk, 10) * 1e3:.2f} ms", flush=True)  # fmt: skip
                    for b in batches:
                        overlap_row(decoder, chunk, alone_chunk, n, b, fast, stream, args)
            del chunked
            torch.cuda.empty_cache()


def overlap_row(decoder, chunk, alone_chunk: float, n: int, b: int, fast, slow, args) -> None:
    """Decode at batch b alone, then beside the chunks; the two rates kept, summed, say how
    much better than one after the other (1.0) running them at once is."""
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
    kept_chunk, kept_decode = rate * alone_chunk / n, pct(alone, 0.5) / pct(steps, 0.5)
    print(
        f"  decode b{b}: alone p50/p99 {pct(alone, 0.5) * 1e3:.2f}/"
        f"{pct(alone, 0.99) * 1e3:.2f} ms; beside chunks p50/p99 "
        f"{pct(steps, 0.5) * 1e3:.2f}/{pct(steps, 0.99) * 1e3:.2f} ms "
        f"({pct(steps, 0.99) / pct(alone, 0.99):.2f}x); chunks meanwhile "
        f"{rate:,.0f} tok/s ({kept_chunk:.0%} of alone), {len(steps)} decode steps = "
        f"{len(steps) * b / wall:,.0f} tok/s; both kept {kept_decode + kept_chunk:.2f} of "
        f"serial; {queueing / wall:.0%} of the wall spent queueing chunks",
        flush=True,
    )


if __name__ == "__main__":
    main()
