"""Where the engine's time goes under load, without the server: CLIENTS prompts submitted at
once to an in-process Engine (as `gkit serve` builds it), stepped to the end, every model
call timed by kind (graphed decode, one prompt chunk, packed decode + chunks) with its token
count. Printed: per kind the calls, ms per call and tokens per call; the whole run's output
tok/s beside the engine's graphed decode step at the same batch (its ceiling) and the ratio;
prompt tok/s while prompts were being prefilled; then ms per call of the shapes a burst
makes (packed steps against their parts), steady state.

Run on the device: python bench/step_profile.py --model granite-4.0-h-micro --rows 64x512/256
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "runtime"), str(HERE.parent)]

import torch  # noqa: E402
from common import checkpoint, timed, word_tokenizer  # noqa: E402

from granite_runtime.engine.engine import Engine  # noqa: E402
from granite_runtime.engine.sampling import SamplingParams  # noqa: E402
from granite_runtime.engine.tokenizer import TextCodec  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402
from granite_runtime.parallel import tp  # noqa: E402

KIND = {tp.OP_DECODE: "decode", tp.OP_FORWARD: "chunk", tp.OP_PACKED: "packed"}


def timed_calls(engine: Engine) -> list[tuple[str, int, float]]:
    """Wrap the engine's model calls: (kind, tokens, seconds) of each, device synchronised."""
    calls, forward = [], engine._forward

    def timed(op, tokens, *rest):
        torch.cuda.synchronize()
        began = time.perf_counter()
        out = forward(op, tokens, *rest)
        torch.cuda.synchronize()
        calls.append((KIND[op], tokens.numel(), time.perf_counter() - began))
        return out

    engine._forward = timed
    return calls


def run_row(engine: Engine, clients: int, prompt_len: int, out: int, vocab: int) -> dict:
    calls = timed_calls(engine)
    params = SamplingParams(temperature=0.0, max_tokens=out, ignore_eos=True)
    g = torch.Generator().manual_seed(clients)
    draw = lambda: torch.randint(100, vocab, (prompt_len,), generator=g).tolist()  # noqa: E731
    prompts = [draw() for _ in range(clients)]
    began = time.perf_counter()
    seqs = [engine.submit(p, params) for p in prompts]
    steps, prefilled_at = 0, None
    while engine.has_work():
        engine.step()
        steps += 1
        if prefilled_at is None and all(s.output_ids for s in seqs):
            prefilled_at = time.perf_counter() - began
    wall = time.perf_counter() - began
    engine._forward = engine.__class__._forward.__get__(engine)
    kinds = defaultdict(list)
    for kind, tokens, seconds in calls:
        kinds[kind].append((tokens, seconds))
    summary = {
        kind: {
            "calls": len(v),
            "ms_per_call": 1e3 * statistics.mean(s for _, s in v),
            "ms_median": 1e3 * statistics.median(s for _, s in v),
            "ms_max": 1e3 * max(s for _, s in v),
            "first_ms": [round(1e3 * s, 1) for _, s in v[:6]],
            "tokens_per_call": statistics.mean(t for t, _ in v),
            "seconds": sum(s for _, s in v),
        }
        for kind, v in kinds.items()
    }
    return {
        "clients": clients,
        "prompt": prompt_len,
        "out": out,
        "steps": steps,
        "wall_s": wall,
        "model_s": sum(s for _, _, s in calls),
        "out_tok_s": clients * out / wall,
        "all_prefilled_s": prefilled_at,
        "prompt_tok_s_until_prefilled": clients * prompt_len / prefilled_at,
        "kinds": summary,
    }


def step_shapes(engine: Engine, decoding: int, vocab: int) -> dict:
    """ms per model call, steady state, of the shapes a burst makes: `decoding` one-token
    rows eager, one plain 448-token chunk, and packed steps of those rows with one chunk
    and with three (256 + 128 + 64, as the budget cuts 448)."""
    shapes = {
        "decode rows eager": [1] * decoding,
        "one chunk of 448": [448],
        "packed rows + 256": [1] * decoding + [256],
        "packed rows + 256 + 128 + 64": [1] * decoding + [256, 128, 64],
    }
    with torch.inference_mode():
        return {name: 1e3 * timed(model_call(engine, n, vocab), 5) for name, n in shapes.items()}


def model_call(engine: Engine, lengths: list[int], vocab: int):
    """A model call over rows of `lengths` tokens on slots 0.. (one-token rows at 512)."""
    from granite_runtime.engine.batch import Batch

    slots = list(range(len(lengths)))
    starts = [512 if n == 1 else 0 for n in lengths]
    device = engine.device
    if len(set(lengths)) == 1:  # a plain batch: rows x length
        batch = Batch.make(slots, starts, device)
        tokens = torch.randint(100, vocab, (len(lengths), lengths[0]), device=device)
    else:
        batch = Batch.packed(slots, starts, lengths, device)
        tokens = torch.randint(100, vocab, (1, sum(lengths)), device=device)
    return lambda: engine.model(tokens, batch, engine.cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="granite-4.0-h-micro")
    ap.add_argument("--root", default="/tmp/gkit-models")
    ap.add_argument("--rows", default="64x512/256")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    path = checkpoint(args.model, Path(args.root))
    word_tokenizer(path)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    model = load_model(path, "bfloat16", "cuda")
    began = time.perf_counter()
    engine = Engine(model, TextCodec.from_dir(path), max_num_seqs=args.slots, max_model_len=4096)
    print(f"{torch.cuda.get_device_name()}: {args.model}, engine up in "
          f"{time.perf_counter() - began:.0f} s", flush=True)  # fmt: skip
    rows = []
    for spec in args.rows.split(","):
        clients, lengths = spec.split("x")
        prompt_len, out = (int(v) for v in lengths.split("/"))
        r = run_row(engine, int(clients), prompt_len, out, vocab)
        rows.append(r)
        print(f"{clients} x {prompt_len}/{out}: {r['out_tok_s']:,.0f} out tok/s, {r['steps']} "
              f"steps in {r['wall_s']:.2f} s (model calls {r['model_s']:.2f} s); all prompts "
              f"in at {r['all_prefilled_s']:.2f} s = {r['prompt_tok_s_until_prefilled']:,.0f} "
              "prompt tok/s", flush=True)  # fmt: skip
        for kind, k in r["kinds"].items():
            print(f"   {kind:>7}: {k['calls']:5d} calls, {k['ms_per_call']:6.2f} ms each "
                  f"(median {k['ms_median']:.2f}, max {k['ms_max']:.0f}, first {k['first_ms']}), "
                  f"{k['tokens_per_call']:6.0f} tokens each, {k['seconds']:.2f} s")  # fmt: skip
    shapes = step_shapes(engine, args.slots - 3, vocab)
    for name, ms in shapes.items():
        print(f"   {name}: {ms:.2f} ms", flush=True)
    if args.json:
        card = torch.cuda.get_device_name()
        args.json.write_text(json.dumps({"card": card, "rows": rows, "shapes_ms": shapes}))


if __name__ == "__main__":
    main()
