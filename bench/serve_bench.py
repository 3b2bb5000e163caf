"""Served throughput and latency: an OpenAI-API load generator against `gkit serve`, beside
the engine's own graphed decode step at the same batch, from the same run.

For each model: a random-weight checkpoint (gpu_memory.checkpoint), the server started as
the image starts it (granite_runtime.server.run), one streaming /v1/completions per client with
token-id prompts and ignore_eos. Rows are CLIENTSxPROMPT/OUTPUT, at fixed concurrency
(every client sends its requests back to back) or with Poisson arrivals (--poisson RATE).
Reported per row: output tok/s, TTFT p50/p99, inter-token latency p50/p99. Then the server
stops and the engine's graphed step runs in-process at each row's batch: its tok/s is the
ceiling the row's output tok/s is divided by. `--itl-under-prefill` adds the row where one
client streams while CLIENTS-1 others arrive with long prompts, and compares that client's
ITL p99 with its own before they came.

Run on the device: python bench/serve_bench.py --models granite-4.0-h-micro
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "runtime"), str(HERE.parent)]

from common import pct, timed  # noqa: E402

# ---- the server -------------------------------------------------------------------------
SERVER = """
import sys
from granite_runtime.server.run import build_service, run_server
path, port, slots, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
chunk, beside = int(sys.argv[6]), sys.argv[7] == "1"
service = build_service(
    path, "cuda", "bfloat16", slots, length, served_name="bench", prefill_chunk=chunk,
    prefill_beside_decode=beside,
)
run_server(service, "127.0.0.1", port)
"""


# A stream with no event for this long counts as an error: a server whose engine stalled
# or died ends the row within this, not at the device call's limit.
STALL_S = 60


def start_server(
    path: Path, port: int, slots: int, length: int, log: Path, prefill_chunk: int = 512,
    beside: bool = False, fake: tuple[float, float, float] | None = None,
    extra_env: dict[str, str] | None = None,
):  # fmt: skip
    """`gkit serve`'s server, or with `fake` (step ms, prompts' slowdown of a step beside
    them or 0 for inside, prefill tok/s) the same server over bench/fake_gpu.py's GPU;
    `extra_env` on top of this process's environment (a GKIT_PREFILL_* knob, say)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*sys.path[:3], os.environ.get("PYTHONPATH", "")]),
        **(extra_env or {}),
    }
    where = [str(path), str(port), str(slots), str(length)]
    if fake:
        step_ms, slowdown, prefill_tok_s = fake
        script = [str(HERE / "fake_gpu.py"), *where, str(step_ms), str(prefill_chunk)]
        script += [str(slowdown), str(prefill_tok_s)]
    else:
        script = ["-c", SERVER, *where, "0", str(prefill_chunk), "1" if beside else "0"]
    proc = subprocess.Popen(
        [sys.executable, *script],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    start = time.monotonic()
    while time.monotonic() - start < 420:  # liveness: a dead server ends the wait at once
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, time.monotonic() - start
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("server did not answer /health within 420 s")


def completion_body(prompt: list[int], out: int) -> bytes:
    return json.dumps(
        {
            "model": "bench",
            "prompt": prompt,
            "max_tokens": out,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()


def stream_one(port: int, body: bytes) -> dict:
    """One streaming completion (`completion_body`): send time, every token's arrival."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=STALL_S)
    sent = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    arrivals = []
    for line in response:
        if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
            arrivals.append(time.perf_counter())  # one event per token
    conn.close()
    return {"sent": sent, "arrivals": arrivals}


def run_row(
    port: int, clients: int, prompt_len: int, out: int, rounds: int, poisson: float,
    vocab: int = 30000,
):  # fmt: skip
    """Every request's body is made before the clock starts: 2,048 random ids take ~1 ms of
    Python each, and the client threads share one GIL, so bodies made in the timed window
    would delay every client's reads (and their arrival times) by the others' making."""
    rng = random.Random(clients * 100003 + prompt_len)
    results, errors = [], []
    lock = threading.Lock()

    def client(plan: list[tuple[float, bytes]]):
        for delay, body in plan:
            time.sleep(delay)
            try:
                r = stream_one(port, body)
            except Exception as e:  # counted, printed, never hidden
                with lock:
                    errors.append(str(e)[:200])
                continue
            with lock:
                results.append(r)

    bodies = [
        completion_body([rng.randrange(100, vocab) for _ in range(prompt_len)], out)
        for _ in range(clients * rounds)
    ]
    if poisson:  # one thread per request, arrivals at `poisson` requests per second
        gaps = [rng.expovariate(poisson) for _ in range(clients * rounds)]
        starts = [sum(gaps[: i + 1]) for i in range(len(gaps))]
        plans = [[(s, body)] for s, body in zip(starts, bodies, strict=True)]
    else:
        plans = [[(0.0, body) for body in bodies[c::clients]] for c in range(clients)]
    threads = [threading.Thread(target=client, args=(plan,)) for plan in plans]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    tokens = sum(len(r["arrivals"]) for r in results)
    ttft = [r["arrivals"][0] - r["sent"] for r in results if r["arrivals"]]
    itl = [b - a for r in results for a, b in itertools.pairwise(r["arrivals"])]
    return {
        "clients": clients,
        "prompt": prompt_len,
        "out": out,
        "requests": len(results),
        "errors": errors[:3],
        "out_tok_s": tokens / wall,
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p99_s": pct(ttft, 0.99),
        "itl_p50_ms": pct(itl, 0.5) * 1e3,
        "itl_p99_ms": pct(itl, 0.99) * 1e3,
    }


def _watch(port: int, out: int, results) -> None:
    results.put(stream_one(port, completion_body([7] * 64, out)))


def itl_under_prefill(port: int, others: int, prompt_len: int, out: int, vocab=30000) -> dict:
    """One client streams 2,048 tokens; 1.5 s in, `others` clients arrive with
    `prompt_len`-token prompts and ask for `out` tokens each. Its ITL p99 before they came
    vs while they prefill (until the last of them has its first token). The watched client
    is a process of its own: in the crowd's process its reads would wait for the crowd's
    threads to hand back the GIL, which is the client's delay, not the server's."""
    fork = multiprocessing.get_context("fork")  # before the crowd's threads exist
    results = fork.Queue()
    watcher = fork.Process(target=_watch, args=(port, 2048, results), daemon=True)
    watcher.start()
    time.sleep(1.5)  # the watched stream's idle pace first (hundreds of tokens)
    arrived = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in the watcher
    crowd = run_row(port, others, prompt_len, out, 1, 0.0, vocab)
    arrivals = results.get(timeout=STALL_S)["arrivals"]
    watcher.join()
    gaps = list(itertools.pairwise(arrivals))
    before = [b - a for a, b in gaps if b < arrived]
    # every gap that overlaps the crowd's prefill window, so a stall spanning all of it
    # counts too (the window holds no arrival then)
    end = arrived + crowd["ttft_p99_s"]
    during = [b - a for a, b in gaps if b >= arrived and a <= end]
    return {
        "others": others,
        "prompt": prompt_len,
        "idle_itl_p99_ms": pct(before, 0.99) * 1e3,
        "during_prefill_itl_p99_ms": pct(during, 0.99) * 1e3,
        "ratio": pct(during, 0.99) / pct(before, 0.99) if before and during else float("nan"),
        "others_ttft_p99_s": crowd["ttft_p99_s"],
    }


# ---- the engine's own ceiling -----------------------------------------------------------
def engine_step_tok_s(path: Path, batches: list[int]) -> dict:
    import torch

    from granite_runtime.engine.batch import Batch
    from granite_runtime.engine.cache import HybridCache
    from granite_runtime.engine.graphs import GraphedDecoder
    from granite_runtime.model.loader import load_model

    model = load_model(path, "bfloat16", "cuda")
    out = {}
    with torch.inference_mode():
        for b in batches:
            cache = HybridCache(model.config, b, 1024, torch.bfloat16, "cuda")
            graphed = GraphedDecoder(model, cache, b)
            graphed.capture([b])
            tokens = torch.randint(0, 900, (b, 1), device="cuda")
            slots, starts = list(range(b)), [512] * b
            if graphed.graphs:
                fn = lambda g=graphed, t=tokens, s=slots, p=starts: g(t, s, p)  # noqa: E731
            else:  # a batch the graphs do not support runs eagerly, as the engine does
                batch = Batch.make(slots, starts, "cuda")
                fn = lambda t=tokens, b=batch, c=cache: model(t, b, c)  # noqa: E731
            out[b] = {"tok_s": b / timed(fn, 50), "graphed": bool(graphed.graphs)}
            del graphed, cache
            torch.cuda.empty_cache()
    return out


def prompt_seconds(path: Path, lengths: list[int], largest: int) -> dict[int, float]:
    """Seconds a prompt of each length takes through the chunk graphs alone on the GPU, as
    a server with `largest`-token chunks prefills it beside the decode steps: whole prompts
    short enough share a replay, `rows` at a time (chunk_graphs.row_counts). With the decode
    step, what the rows would take with prompts and steps one after the other."""
    import torch

    from granite_runtime.engine.cache import HybridCache
    from granite_runtime.engine.chunk_graphs import GraphedChunks, row_counts
    from granite_runtime.engine.startup import warm_up_prefill
    from granite_runtime.model.loader import load_model

    model = load_model(path, "bfloat16", "cuda")
    out = {}
    with torch.inference_mode():
        for n in lengths:
            rows = row_counts([n], largest).get(n, 1)
            cache = HybridCache(model.config, rows, n, torch.bfloat16, "cuda")
            warm_up_prefill(model, cache, n)  # compiled and tuned before the capture
            chunks = GraphedChunks(model, cache)
            chunks.capture([n], {n: rows})
            tokens = torch.randint(0, 900, (rows, n), device="cuda")
            alone = timed(lambda c=chunks, t=tokens: c(t[:1], 0, 0), 20)
            out[n] = alone
            if rows > 1:
                each = (tokens, torch.full((rows,), n, device="cuda"), torch.arange(rows).cuda())
                shared = timed(lambda c=chunks, a=each: c.replay_prompts(*a), 20)
                out[n] = shared / rows
                print(
                    f"  prompt of {n}: alone {n / alone:,.0f} tok/s, {rows} sharing a replay "
                    f"{rows * n / shared:,.0f} tok/s",
                    flush=True,
                )
            del chunks, cache
            torch.cuda.empty_cache()
    return out


def server_overhead(args) -> None:
    """The rows, and the ITL probe, against the server over bench/fake_gpu.py's GPU."""
    from granite_ops_kit.demo.checkpoint import write_demo_model

    path = Path(args.root) / "tiny-hybrid"
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_demo_model(path, "tiny-hybrid", force=True)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    log = Path("/tmp/serve-bench-fake.log")
    chunk = int(args.prefill_chunks.split(",")[0])
    prefill_tok_s = args.fake_prefill_tok_s or 512 / (args.fake_step_ms / 1e3)
    fake = (args.fake_step_ms, args.fake_beside, prefill_tok_s)
    proc, _ = start_server(path, args.port, args.slots, args.max_model_len, log, chunk, fake=fake)
    rows, step = [], args.fake_step_ms / 1e3
    report = {"fake_step_ms": step * 1e3, "fake_beside": args.fake_beside, "rows": rows}
    report["fake_prefill_tok_s"] = prefill_tok_s
    try:
        stream_one(args.port, completion_body([5] * 16, 8))
        for spec in args.rows.split(",") if args.rows else ():
            clients, lengths = spec.split("x")
            prompt_len, out = (int(v) for v in lengths.split("/"))
            r = run_row(args.port, int(clients), prompt_len, out, args.rounds, 0.0, vocab - 1)
            r["ceiling_tok_s"] = min(int(clients), args.slots) / step
            r["served_vs_ceiling"] = r["out_tok_s"] / r["ceiling_tok_s"]
            rows.append(r)
            print(
                f"  {clients:>3} x {prompt_len}/{out}: {r['out_tok_s']:,.0f} of "
                f"{r['ceiling_tok_s']:,.0f} tok/s ({r['served_vs_ceiling']:.0%}), ITL p50/p99 "
                f"{r['itl_p50_ms']:.1f}/{r['itl_p99_ms']:.1f} ms, TTFT p99 {r['ttft_p99_s']:.2f} s",
                flush=True,
            )
        for others_out in (1, 16) if args.itl_under_prefill else ():
            others = args.itl_under_prefill - 1
            u = itl_under_prefill(args.port, others, 2048, others_out, vocab - 1)
            report[f"itl_under_prefill_{others_out}"] = u
            print(
                f"  one client while {others} prefill 2048 (out {others_out}): ITL p99 "
                f"{u['during_prefill_itl_p99_ms']:.1f} ms = {u['ratio']:.2f}x idle "
                f"({u['idle_itl_p99_ms']:.1f} ms; the fake GPU alone would give "
                f"{args.fake_beside or float('nan'):.2f}x), others' TTFT p99 "
                f"{u['others_ttft_p99_s']:.2f} s",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(60)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def parse_env(spec: str) -> dict[str, str]:
    """`--server-envs` item: '' (nothing added) or NAME=VALUE joined by '+'."""
    return dict(part.split("=", 1) for part in spec.split("+") if part)


def serve_rows(
    args, key: str, path: Path, rows, chunk: int, beside: bool, env: str, report: dict
) -> list[dict]:
    """Every row against one server (`prefill_chunk=chunk`, prompts beside the decode steps
    or inside them, `env` added to its environment), then the ITL-under-prefill probe; the
    server is stopped before the engine's own ceiling is measured."""
    where = "beside" if beside else "inside"
    # a plain file name: the device machine brings back no file with '=' or '+' in it
    log = (args.logs or Path("/tmp")) / (re.sub(r"[^A-Za-z0-9._-]", "-", key) + ".log")
    proc, up = start_server(
        path, args.port, args.slots, args.max_model_len, log, chunk, beside,
        extra_env=parse_env(env),
    )  # fmt: skip
    print(
        f"{key}: server up in {up:.0f} s ({args.slots} slots, chunk {chunk}, prompts {where} "
        f"the decode steps{', ' + env if env else ''})",
        flush=True,
    )
    served = []
    try:
        stream_one(args.port, completion_body([5] * 32, 8))  # warm
        for clients, prompt_len, out in rows:
            r = run_row(args.port, clients, prompt_len, out, args.rounds, args.poisson)
            r["prefill_chunk"], r["prefill"] = chunk, where
            served.append(r)
            print(
                f"  {clients:>3} x {prompt_len}/{out}: {r['out_tok_s']:,.0f} out tok/s, "
                f"TTFT p50/p99 {r['ttft_p50_s']:.2f}/{r['ttft_p99_s']:.2f} s, ITL p50/p99 "
                f"{r['itl_p50_ms']:.1f}/{r['itl_p99_ms']:.1f} ms"
                + (f", errors {r['errors']}" if r["errors"] else ""),
                flush=True,
            )
            if r["errors"]:
                print(f"  server log, last lines:\n{log.read_text()[-1500:]}", flush=True)
        # the others ask for 1 token (prefill alone beside the stream) and for 16 (they
        # join its decode steps too, which grow from batch 1 to 64)
        for others_out in (1, 16) if args.itl_under_prefill else ():
            others = args.itl_under_prefill - 1
            u = itl_under_prefill(args.port, others, 2048, others_out)
            report[f"{key}_itl_under_prefill_{others_out}"] = u
            print(f"  one client while {others} prefill 2048 (out {others_out}): {u}", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    return served


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="granite-4.0-h-micro")
    ap.add_argument("--root", default="/tmp/gkit-models")
    ap.add_argument("--rows", default="1x512/256,8x512/256,64x512/256,128x512/256,64x2048/128")
    ap.add_argument("--slots", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client (fixed)")
    ap.add_argument("--poisson", type=float, default=0.0, help="requests/s instead")
    ap.add_argument("--itl-under-prefill", type=int, default=0, help="clients in that row")
    ap.add_argument(
        "--prefill-chunks", default="512", help="comma-separated: a server for each value"
    )
    ap.add_argument(
        "--prefill-beside",
        default="0",
        help="comma-separated 0/1: a server with prompts inside the decode steps (0) or "
        "beside them on a stream of their own (1)",
    )
    ap.add_argument(
        "--server-envs",
        default="",
        help="comma-separated: a server for each, its environment plus NAME=VALUE (several "
        "joined by '+'; empty: nothing added), e.g. ',GKIT_PREFILL_GREEN_SMS=100'",
    )
    ap.add_argument("--port", type=int, default=18123)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--logs", type=Path, default=None, help="folder for the servers' logs")
    ap.add_argument(
        "--fake-step-ms",
        type=float,
        default=0.0,
        help="measure the server alone: the demo model on the CPU, every decode step this long "
        "on a fake GPU (bench/fake_gpu.py), the ceiling CLIENTS / step",
    )
    ap.add_argument(
        "--fake-beside",
        type=float,
        default=0.0,
        help="with --fake-step-ms: prompts beside the decode steps, each step launched beside "
        "them this many times as long (0: prompts inside the steps)",
    )
    ap.add_argument(
        "--fake-prefill-tok-s",
        type=float,
        default=0.0,
        help="with --fake-step-ms: the fake GPU's prefill rate (default 512 tokens a step)",
    )
    args = ap.parse_args()
    # `timeout` sends SIGTERM: leave through the finally blocks, which stop the server (one
    # left running would share the GPU with whatever the call runs next)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.fake_step_ms:
        return server_overhead(args)
    import torch

    card = torch.cuda.get_device_name()
    print(f"card: {card}", flush=True)
    from common import checkpoint, word_tokenizer

    report = {"card": card}
    rows = []
    for spec in args.rows.split(","):
        clients, lengths = spec.split("x")
        prompt_len, out = lengths.split("/")
        rows.append((int(clients), int(prompt_len), int(out)))
    for name in args.models.split(","):
        path = checkpoint(name, Path(args.root))
        word_tokenizer(path)
        chunks = [int(c) for c in args.prefill_chunks.split(",")]
        variants = [
            (c, b == "1", e)
            for c in chunks
            for b in args.prefill_beside.split(",")
            for e in args.server_envs.split(",")
        ]
        served_keys = []
        for chunk, beside, env in variants:
            where = "beside" if beside else "inside"
            key = name if len(variants) == 1 else f"{name}_prefill_chunk_{chunk}_{where}"
            key += f"_{env}" if env else ""
            try:
                report[key] = serve_rows(args, key, path, rows, chunk, beside, env, report)
                served_keys.append(key)
            except RuntimeError as failed:  # a server that did not start: the next may
                print(f"{key}: {str(failed)[-1500:]}", flush=True)
                report[f"{key}_failed"] = str(failed)[-1500:]
            if args.json:  # kept so far, should a later server not come back
                args.json.write_text(json.dumps(report, indent=2))
        ceilings = engine_step_tok_s(path, sorted({min(c, args.slots) for c, _, _ in rows}))
        prompts = prompt_seconds(path, sorted({n for _, n, _ in rows}), max(chunks))
        for key in served_keys:
            for r in report[key]:
                ceiling = ceilings[min(r["clients"], args.slots)]
                r["engine_step_tok_s"], r["engine_graphed"] = ceiling["tok_s"], ceiling["graphed"]
                r["served_vs_engine"] = r["out_tok_s"] / ceiling["tok_s"]
                # every client's prompt, then its tokens at the step's rate, one after the other
                step_s = min(r["clients"], args.slots) / ceiling["tok_s"]
                serial_s = r["clients"] * prompts[r["prompt"]] + r["out"] * step_s
                r["serial_tok_s"] = r["clients"] * r["out"] / serial_s
                print(
                    f"  {key} {r['clients']:>3} x {r['prompt']}/{r['out']}: served "
                    f"{r['out_tok_s']:,.0f} / engine step {ceiling['tok_s']:,.0f} tok/s "
                    f"(graphed {ceiling['graphed']}) = {r['served_vs_engine']:.0%}; prompts "
                    f"and steps one after the other: {r['serial_tok_s']:,.0f} tok/s "
                    f"({r['out_tok_s'] / r['serial_tok_s']:.0%} of it served)",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
