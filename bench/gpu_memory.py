"""Validate `gkit size --engine gkit` against measured GPU memory (run on the device).

For each model (real shapes, random weights) and each (context, concurrency) point: start
the engine on one GPU as `gkit serve` does (weights, pools, the CUDA graphs captured for
every decode batch size), run the largest steps (a 512-token prefill chunk, then one decode
step over every slot), and compare torch.cuda.max_memory_reserved() with the memory model's
prediction. Then load the same checkpoint in transformers and compare its weights and cache
with our formulas (transformers keeps d_conv = 4 conv columns).

Weights are drawn on the GPU and saved with safetensors (common.random_model): seconds,
where the demo-model writer (numpy, one core) took 109 s for h-micro and 223 s for h-tiny.

    python3 bench/gpu_memory.py [--models h-micro,h-tiny] [--root /tmp/gkit-models]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import checkpoint, fresh

from granite_ops_kit.sizing import engines
from granite_runtime.engine.engine import Engine
from granite_runtime.model.loader import load_model
from granite_runtime.spec import memory
from granite_runtime.spec.config import GraniteConfig

POINTS = [(4096, 32), (32768, 8), (131072, 4)]
MIB = 2**20


@torch.inference_mode()
def gkit_rows(path: Path, points: list[tuple[int, int]]) -> list[dict]:
    fresh()
    rows = []
    for context, sessions in points:
        model = load_model(path, "bfloat16", "cuda")
        c = model.config
        engine = Engine(model, None, max_num_seqs=sessions, max_model_len=context)
        prompt = torch.randint(0, 900, (1, 512), device="cuda")
        engine._forward(prompt, [0], [0], decode=False)
        tokens = torch.randint(0, 900, (sessions, 1), device="cuda")
        engine._forward(tokens, list(range(sessions)), [512] * sessions, decode=True)
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_reserved()
        graphs = sorted(engine.graphs.graphs) if engine.graphs else []
        f = engines.gkit(c, engines.Workload(context, sessions), 1)
        rows.append(
            {
                "context": context,
                "sessions": sessions,
                "predicted": f.torch_reserved,
                "measured": measured,
                "error": measured / f.torch_reserved - 1,
                "weights": f.weights,
                "pools": f.kv_cache + f.state_cache,
                "activations_predicted": f.activations,
                "graphed_batches": f"{graphs[0]}-{graphs[-1]}" if graphs else "none",
            }
        )
        del engine, model
        fresh()
    return rows


@torch.inference_mode()
def transformers_rows(path: Path, points: list[tuple[int, int]]) -> list[dict]:
    from transformers import GraniteMoeHybridForCausalLM

    fresh()
    model = GraniteMoeHybridForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    c = GraniteConfig.from_file(path / "config.json")
    weights = torch.cuda.memory_allocated()
    rows = [{"what": "weights", "predicted": memory.parameter_count(c) * 2, "measured": weights}]
    for context, batch in points:
        ids = torch.randint(0, 900, (batch, context), device="cuda")
        out = model(ids, use_cache=True, logits_to_keep=1)
        cache_bytes = torch.cuda.memory_allocated() - weights - out.logits.numel() * 4
        # transformers keeps d_conv = 4 conv columns (bf16) and, on its PyTorch path, the SSM
        # state in fp32 (found on the device, 2026-11-28).
        state = memory.state_bytes_per_sequence_per_gpu(
            c, "float32", conv_columns=c.mamba_conv, conv_dtype="bfloat16"
        )
        predicted = batch * (context * memory.kv_bytes_per_token(c) + state)
        rows.append(
            {"what": f"cache {batch}x{context}", "predicted": predicted, "measured": cache_bytes}
        )
        del out
        fresh()
    del model
    for row in rows:
        row["error"] = row["measured"] / row["predicted"] - 1
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="granite-4.0-h-micro,granite-4.0-h-tiny")
    ap.add_argument("--root", default="/tmp/gkit-models")
    ap.add_argument(
        "--points",
        default=",".join(f"{c}x{n}" for c, n in POINTS),
        help="context x sessions for gkit, e.g. 4096x32,32768x8",
    )
    ap.add_argument(
        "--hf-points", default="4096x1,2048x2", help="context x batch for transformers' cache"
    )
    args = ap.parse_args()
    points = [tuple(int(v) for v in p.split("x")) for p in args.points.split(",")]
    hf_points = [tuple(int(v) for v in p.split("x")) for p in args.hf_points.split(",") if p]
    print(f"card: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    report = {}
    for name in args.models.split(","):
        path = checkpoint(name, Path(args.root))
        report[name] = {
            "gkit": gkit_rows(path, points),
            "transformers": transformers_rows(path, hf_points) if hf_points else [],
        }
        print(f"\n{name}: gkit runtime, torch.cuda.max_memory_reserved() vs gkit size")
        print(
            f"{'context':>8} {'sessions':>8} {'predicted MiB':>14} {'measured MiB':>13} "
            f"{'error':>7}  graphs"
        )
        for r in report[name]["gkit"]:
            print(
                f"{r['context']:>8} {r['sessions']:>8} {r['predicted'] / MIB:>14.0f} "
                f"{r['measured'] / MIB:>13.0f} {r['error']:>+7.2%}  {r['graphed_batches']}"
            )
        print(f"{name}: transformers, measured vs our formulas")
        for r in report[name]["transformers"]:
            print(
                f"{r['what']:>16} {r['predicted'] / MIB:>14.0f} {r['measured'] / MIB:>13.0f} "
                f"{r['error']:>+7.2%}"
            )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
