"""FP8 weights against bf16 on one GPU: same random weights, same run (run on the device).

Draws the model's bf16 weights on the GPU (common.random_model), measures it, then
quantizes the same model in place (fp8.quantize_linears) and measures again: the logits of
a 64-token prompt against bf16 (relative error, top-1 agreement per position), prefill tok/s,
decode tok/s at each batch size from CUDA graphs, and decode's fraction of the memory
roofline (the bytes the model's tensors really hold, plus KV and state, over the copy
bandwidth measured in the same run).

    python3 bench/fp8_bench.py [--models granite-4.0-h-micro] [--batches 1 8 64]
"""

from __future__ import annotations

import argparse
import json

import torch
from common import catalog_config, copy_bandwidth, random_model, timed

from granite_runtime.engine.batch import Batch
from granite_runtime.engine.cache import HybridCache
from granite_runtime.engine.graphs import GraphedDecoder
from granite_runtime.kernels import select
from granite_runtime.layers import fp8
from granite_runtime.spec import memory
from granite_runtime.spec.config import GraniteConfig


def _bytes(model: torch.nn.Module) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _measure(model, config, prompt: int, batches: list[int], bandwidth: float) -> dict:
    out = {"weights_gib": _bytes(model) / 2**30}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (1, 64), generator=g).cuda()
    pool = HybridCache(config, 1, prompt + 8, torch.bfloat16, "cuda")
    out["logits"] = model(ids, Batch.make([0], [0], "cuda"), pool, all_logits=True)[0].cpu()
    long = torch.randint(0, config.vocab_size, (1, prompt), generator=g).cuda()
    secs = timed(lambda: model(long, Batch.make([0], [0], "cuda"), pool), 2)
    out["prefill_tok_s"] = prompt / secs
    pool = None  # freed before the decode pools
    for b in batches:
        cache = HybridCache(config, b, 1024, torch.bfloat16, "cuda")
        graphed = GraphedDecoder(model, cache, b)
        graphed.capture([b])
        tokens = torch.randint(0, config.vocab_size, (b, 1), generator=g).cuda()
        slots, starts = list(range(b)), [512] * b
        step = timed(lambda gr=graphed, t=tokens, s=slots, p=starts: gr(t, s, p), 50)
        moved = _bytes(model) + b * (
            512 * memory.kv_bytes_per_token(config) + 2 * memory.state_bytes_per_sequence(config)
        )
        out[f"decode_b{b}"] = {
            "tok_s": b / step,
            "step_ms": step * 1e3,
            "roofline_fraction": moved / step / 1e9 / bandwidth,
        }
        del graphed, cache
        torch.cuda.empty_cache()
    return out


@torch.inference_mode()
def run(name: str, prompt: int, batches: list[int], bandwidth: float) -> dict:
    raw = catalog_config(name)
    config = GraniteConfig.from_dict(raw)
    model = random_model(raw, 0, 1, "cuda")
    # the yardstick for fp8's error: bf16's own error against fp32 on the same weights
    ids = torch.randint(0, config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    pool = HybridCache(config, 1, 72, torch.float32, "cuda")
    model.float()
    select.apply(model, select.resolve("cuda", torch.float32))  # a choice per dtype
    fp32 = model(ids.cuda(), Batch.make([0], [0], "cuda"), pool, all_logits=True)[0]
    fp32, pool = fp32.cpu(), None
    model.to(torch.bfloat16)
    select.apply(model, select.resolve("cuda", torch.bfloat16))
    bf16 = _measure(model, config, prompt, batches, bandwidth)
    fp8.quantize_linears(model)
    select.apply(model, model.kernels)  # the fp8 linears take the model's kernels too
    torch.cuda.empty_cache()
    q = _measure(model, config, prompt, batches, bandwidth)
    a, b = bf16.pop("logits").float(), q.pop("logits").float()
    return {
        "bf16_vs_fp32_rel_err": ((a - fp32).norm() / fp32.norm()).item(),
        "bf16_vs_fp32_top1": (a.argmax(-1) == fp32.argmax(-1)).float().mean().item(),
        "logits_rel_err": ((b - a).norm() / a.norm()).item(),
        "top1_agreement": (a.argmax(-1) == b.argmax(-1)).float().mean().item(),
        "bf16": bf16,
        "fp8": q,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["granite-4.0-h-micro"])
    ap.add_argument("--prompt", type=int, default=4096)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    args = ap.parse_args()
    bandwidth = copy_bandwidth()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bandwidth:.0f} GB/s")
    for name in args.models:
        r = run(name, args.prompt, args.batches, bandwidth)
        print(
            f"\n{name}: fp8 vs bf16 logits relative error {r['logits_rel_err']:.3f}, "
            f"top-1 agreement {r['top1_agreement']:.1%} (64 positions); yardstick: bf16 vs "
            f"fp32 {r['bf16_vs_fp32_rel_err']:.3f}, top-1 {r['bf16_vs_fp32_top1']:.1%}"
        )
        for kind in ("bf16", "fp8"):
            m = r[kind]
            print(
                f"  {kind}: weights {m['weights_gib']:.2f} GiB, prefill "
                f"{m['prefill_tok_s']:,.0f} tok/s"
            )
            for key, v in m.items():
                if key.startswith("decode_b"):
                    print(
                        f"    {key}: {v['tok_s']:,.1f} tok/s, {v['step_ms']:.2f} ms, "
                        f"{v['roofline_fraction']:.1%} of the roofline"
                    )
        for key in [k for k in r["bf16"] if k.startswith("decode_b")]:
            ratio = r["fp8"][key]["tok_s"] / r["bf16"][key]["tok_s"]
            print(f"  {key}: fp8 / bf16 = {ratio:.2f}x")
        print(json.dumps({"model": name, **r}))


if __name__ == "__main__":
    main()
