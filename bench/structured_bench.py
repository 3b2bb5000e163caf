"""Structured-output overhead: batch-1 decode with a JSON schema against without, same run.

The engine's own decode is the peer: the same model, prompt, seeds and token budget, with
and without `response_format`-style grammar (llguidance masks computed while the step runs,
applied before sampling). Prints ms per generated token for each, the ratio, and the mask
cost alone (compute on the CPU, apply on the device).

The demo tokenizer has ~900 tokens, which would make masks unrealistically cheap; with
`--vocab N` the checkpoint's tokenizer.json is extended to N byte-level tokens of 1-9
characters (synthetic words, as a 100k BPE vocabulary holds), so the mask walks a trie of
Granite's size. Usage:

    python bench/structured_bench.py --preset tiny-hybrid --device cpu
    python bench/structured_bench.py --preset granite-4.0-h-micro --device cuda --vocab 100352
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

PET = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog", "parrot"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "name": {"type": "string", "maxLength": 40},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 8},
        "notes": {"type": "string", "maxLength": 400},
    },
    "required": ["kind", "age", "name", "tags", "notes"],
    "additionalProperties": False,
}


def model_dir(root: Path, preset: str) -> Path:
    from granite_ops_kit.demo.checkpoint import write_demo_model

    path = root / preset
    root.mkdir(parents=True, exist_ok=True)
    if not (path / "config.json").exists():
        write_demo_model(path, preset)
    return path


def widen_tokenizer(path: Path, vocab: int) -> None:
    """Extend the byte-level BPE vocabulary to `vocab` tokens (ids after the added ones)."""
    doc = json.loads((path / "tokenizer.json").read_text())
    table = doc["model"]["vocab"]
    used = set(table.values()) | {t["id"] for t in doc["added_tokens"]}
    alphabet = [c for c in table if len(c) == 1]
    rng = random.Random(0)
    next_id = max(used) + 1
    while next_id < vocab:
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
        if rng.random() < 0.6:
            word = "\u0120" + word  # the byte-level space, as most BPE tokens start
        if word not in table:
            table[word] = next_id
            next_id += 1
    (path / "tokenizer.json").write_text(json.dumps(doc))


def per_token_ms(engine, prompt, params) -> tuple[float, int, str]:
    seq = engine.submit(prompt, params)
    first, after_first = None, 0
    while seq.finish_reason is None:
        engine.step()
        if first is None and seq.output_ids:
            first, after_first = time.perf_counter(), len(seq.output_ids)
    done = time.perf_counter()
    n = len(seq.output_ids)
    return (done - first) * 1e3 / max(1, n - after_first), n, seq.text


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def mask_cost(engine, grammar: str, rounds: int = 200) -> tuple[float, float]:
    """Microseconds per mask: computed (CPU) and applied to one row of logits (device)."""
    matcher = engine.grammars.matcher(grammar)
    masks = engine._masks
    fill, apply = [], []
    logits = torch.randn(1, engine.model.config.vocab_size, device=engine.device)
    for _ in range(rounds):
        t = time.perf_counter()
        masks.fill([(0, matcher)])
        fill.append(time.perf_counter() - t)
        t = time.perf_counter()
        masks.apply(logits, [0], [0])
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        apply.append(time.perf_counter() - t)
    return statistics.median(fill) * 1e6, statistics.median(apply) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny-hybrid")
    ap.add_argument("--root", type=Path, default=Path("/tmp/gkit-models"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab", type=int, default=0, help="widen the tokenizer to N tokens")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()

    from granite_runtime.engine.engine import Engine
    from granite_runtime.engine.sampling import SamplingParams
    from granite_runtime.engine.tokenizer import TextCodec
    from granite_runtime.model.loader import load_model

    path = model_dir(args.root, args.preset)
    if args.vocab:
        vocab = json.loads((path / "config.json").read_text())["vocab_size"]
        if args.vocab > vocab:
            raise SystemExit(f"--vocab {args.vocab} exceeds {args.preset}'s vocab_size {vocab}.")
        widen_tokenizer(path, args.vocab)
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    model = load_model(path, dtype, args.device)
    codec = TextCodec.from_dir(path)
    engine = Engine(model, codec, max_num_seqs=1, max_model_len=1024)
    prompt = codec.encode(codec.render_chat([{"role": "user", "content": "Describe a pet."}]))
    started = time.perf_counter()
    grammar = engine.grammars.json_schema(PET)
    compile_s = time.perf_counter() - started
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"device {name}; model {args.preset}; tokenizer {codec.tokenizer.get_vocab_size():,} "
        f"tokens; llguidance tokenizer + schema compile {compile_s:.2f} s"
    )
    rows, valid = {"plain": [], "json_schema": []}, 0
    counts = {"plain": [], "json_schema": []}
    per_token_ms(engine, prompt, SamplingParams(max_tokens=8))  # warm up
    for seed in range(args.seeds):  # interleaved, so drift in the machine hits both
        for label, g in (("plain", None), ("json_schema", grammar)):
            params = SamplingParams(
                temperature=1.0, seed=seed, max_tokens=args.tokens, grammar=g, ignore_eos=g is None
            )
            ms, n, text = per_token_ms(engine, prompt, params)
            rows[label].append(ms)
            counts[label].append(n)
            if g is not None:
                valid += _parses(text)
    plain, constrained = statistics.median(rows["plain"]), statistics.median(rows["json_schema"])
    fill_us, apply_us = mask_cost(engine, grammar)
    print(f"{'variant':<14}{'ms/token':>10}{'tok/s':>10}   tokens per run")
    for label, ms in (("plain", plain), ("json_schema", constrained)):
        print(f"{label:<14}{ms:>10.3f}{1e3 / ms:>10.1f}   {counts[label]}")
    print(
        f"json_schema / plain time per token: {constrained / plain:.3f}x "
        f"({(constrained / plain - 1) * 100:+.1f}%)"
    )
    print(f"constrained answers that parse as JSON: {valid} of {args.seeds}")
    print(f"mask alone: compute {fill_us:.0f} us (CPU), apply {apply_us:.0f} us ({args.device})")


if __name__ == "__main__":
    main()
