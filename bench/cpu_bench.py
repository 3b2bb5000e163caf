"""CPU benchmark: gkit's runtime against Hugging Face transformers, same weights, same run.

Writes (or reuses) a real-shape demo checkpoint (default granite-4.0-h-350m, random weights),
loads it in both engines, then alternates them for several rounds (this machine is noisy;
alternating keeps drift from favouring one side) and reports the median of:
- prompt processing: tok/s over a 512-token prompt;
- decode: tok/s at batch 1, greedy, over 32 tokens after the prompt.

    .venv/bin/python bench/cpu_bench.py [--preset h-350m] [--dtype float32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from granite_ops_kit.demo.checkpoint import write_demo_model
from granite_runtime.engine.batch import Batch
from granite_runtime.engine.cache import HybridCache
from granite_runtime.kernels.cpu.prepare import prepare_for_cpu
from granite_runtime.model.loader import load_model


def _checkpoint(preset: str, root: Path) -> Path:
    path = root / preset
    if not (path / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        write_demo_model(path, preset)
    return path


class Gkit:
    def __init__(self, path: Path, dtype: str):
        self.model = load_model(path, dtype)
        prepare_for_cpu(self.model)  # what the engine does on the CPU

    @torch.inference_mode()
    def run(self, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
        cache = HybridCache(
            self.model.config,
            1,
            prompt.shape[1] + new_tokens + 1,
            self.model.model.embed_tokens.weight.dtype,
            "cpu",
        )
        start = time.perf_counter()
        logits = self.model(prompt, Batch.make([0], [0], "cpu"), cache)
        prefill = time.perf_counter() - start
        token = logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for i in range(new_tokens):
            logits = self.model(token, Batch.make([0], [prompt.shape[1] + i], "cpu"), cache)
            token = logits[:, -1].argmax(-1, keepdim=True)
        return prefill, time.perf_counter() - start


class Transformers:
    def __init__(self, path: Path, dtype: str):
        from transformers import GraniteMoeHybridForCausalLM

        self.model = GraniteMoeHybridForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype)
        ).eval()

    @torch.inference_mode()
    def run(self, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
        start = time.perf_counter()
        out = self.model(prompt, use_cache=True)
        prefill = time.perf_counter() - start
        cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = self.model(token, cache=cache, use_cache=True)
            cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        return prefill, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="granite-4.0-h-350m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="bench/.models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = _checkpoint(args.preset, Path(args.models))
    prompt = torch.randint(
        0, 900, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0)
    )
    engines = {"gkit": Gkit(path, args.dtype), "transformers": Transformers(path, args.dtype)}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for engine in engines.values():
        engine.run(prompt[:, :32], 4)  # warm-up: allocator, thread pool, oneDNN kernels
    for _ in range(args.rounds):
        for name, engine in engines.items():
            samples[name].append(engine.run(prompt, args.new_tokens))
    rows = {
        name: {
            "prefill_tok_s": args.prompt_tokens / statistics.median(p for p, _ in runs),
            "decode_tok_s": args.new_tokens / statistics.median(d for _, d in runs),
        }
        for name, runs in samples.items()
    }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.preset} {args.dtype}, {args.threads} threads, prompt {args.prompt_tokens}, "
        f"decode {args.new_tokens} tokens at batch 1, median of {args.rounds} alternating "
        f"rounds (peak RSS of the whole run {peak:.0f} MiB)"
    )
    print(f"{'engine':<16}{'prefill tok/s':>15}{'decode tok/s':>15}")
    for name, r in rows.items():
        print(f"{name:<16}{r['prefill_tok_s']:>15.1f}{r['decode_tok_s']:>15.2f}")
    g, t = rows["gkit"], rows["transformers"]
    print(
        f"{'gkit / transf.':<16}{g['prefill_tok_s'] / t['prefill_tok_s']:>14.2f}x"
        f"{g['decode_tok_s'] / t['decode_tok_s']:>14.2f}x"
    )
    print(json.dumps({"preset": args.preset, "dtype": args.dtype, "results": rows}))


if __name__ == "__main__":
    main()
