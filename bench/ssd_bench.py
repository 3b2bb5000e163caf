"""The SSD chunked scan (prefill) at a model's shapes: gkit's Triton kernels against
mamba_ssm's `mamba_chunk_scan_combined`, same inputs, same call, timed in one run.

mamba_ssm is loaded from a git-ignored folder holding its `mamba_ssm/ops/triton/` and
`mamba_ssm/utils/` files (bench/_peers/, see bench/NOTES.md), never installed or committed.

    python3 bench/ssd_bench.py --peer bench/_peers [--lengths 4096,32768]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from granite_runtime.kernels.triton import scan as triton_ssd
from granite_runtime.layers import ssd

CATALOG = Path(__file__).resolve().parents[1] / "granite_ops_kit" / "catalog"


def inputs(h: int, p: int, n: int, g: int, length: int, dtype=torch.bfloat16) -> dict:
    """Laid out as gkit's conv output holds them: x, B and C are views of one tensor."""
    gen = torch.Generator(device="cuda").manual_seed(length)
    xbc = torch.randn(1, length, h * p + 2 * g * n, device="cuda", generator=gen).to(dtype)
    return {
        "x": xbc[..., : h * p].view(1, length, h, p),
        "dt": F.softplus(torch.randn(1, length, h, device="cuda", generator=gen) - 3),
        "A": -torch.exp(torch.randn(h, device="cuda", generator=gen) * 0.5),
        "Bm": xbc[..., h * p : h * p + g * n].view(1, length, g, n),
        "Cm": xbc[..., h * p + g * n :].view(1, length, g, n),
        "D": torch.randn(h, device="cuda", generator=gen),
    }


def load_peer(folder: str):
    sys.path.insert(0, str(Path(folder).resolve()))
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def compare(i: dict, chunk: int, peer, reference: bool, profile: bool = False) -> dict:
    x, dt, a, bm, cm, d = i["x"], i["dt"], i["A"], i["Bm"], i["Cm"], i["D"]
    h, p, n = x.shape[2], x.shape[3], bm.shape[3]
    final = torch.empty(1, h, p, n, device="cuda")
    variants = {
        f"gkit_q{q}": lambda q=q: triton_ssd.chunked_scan(x, dt, a, bm, cm, d, q, final=final)
        for q in sorted({chunk, 128})
    }
    variants[f"gkit_q{chunk}_y_in_x_dtype"] = lambda: triton_ssd.chunked_scan(
        x, dt, a, bm, cm, d, chunk, final=final, out_dtype=x.dtype
    )  # mamba_ssm writes y in x's dtype; gkit's default keeps it fp32 for the gated norm
    if peer is not None:  # same inputs; dt already through softplus, final state returned
        variants["mamba_ssm"] = lambda: peer(x, dt, a, bm, cm, chunk, D=d, return_final_states=True)
    out = {}
    ours = variants[f"gkit_q{chunk}"]()
    if peer is not None:
        theirs = variants["mamba_ssm"]()
        out["y_vs_mamba_ssm_rel"] = _rel(ours[0], theirs[0])
        out["state_vs_mamba_ssm_rel"] = _rel(ours[1], theirs[1])
    if reference:  # the fp32 PyTorch reference (ssd.py) on the same bf16 inputs
        y_ref, s_ref = ssd.chunked_scan(x, dt, a, bm, cm, d, chunk)
        out["y_vs_reference_rel"] = _rel(ours[0], y_ref)
        out["state_vs_reference_rel"] = _rel(ours[1], s_ref)
        if peer is not None:
            out["mamba_ssm_y_vs_reference_rel"] = _rel(theirs[0], y_ref)
        variants["pytorch_reference"] = lambda: ssd.chunked_scan(x, dt, a, bm, cm, d, chunk)
    for name, fn in variants.items():
        out[f"{name}_ms"] = do_bench(fn, warmup=10, rep=100, return_mode="median")
    if profile:
        from common import profile_step

        print(profile_step(variants[f"gkit_q{chunk}"], 12))
    if peer is not None:
        out["mamba_ssm_over_gkit"] = out["mamba_ssm_ms"] / min(
            v for k, v in out.items() if k.startswith("gkit_q") and k.endswith("_ms")
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="granite-4.0-h-micro")
    ap.add_argument("--lengths", default="4096,32768")
    ap.add_argument("--peer", default="", help="folder holding mamba_ssm/ (its Triton files)")
    ap.add_argument("--profile", type=int, default=0, help="kernel table at this length")
    args = ap.parse_args()
    raw = json.loads((CATALOG / f"{args.model}.json").read_text())
    h, p, n = raw["mamba_n_heads"], raw["mamba_d_head"], raw["mamba_d_state"]
    g, chunk = raw["mamba_n_groups"], raw.get("mamba_chunk_size", 256)
    peer = load_peer(args.peer) if args.peer else None
    print(f"card: {torch.cuda.get_device_name()}; {args.model}: {h} heads x {p}, state {n}")
    report = {"card": torch.cuda.get_device_name(), "model": args.model}
    with torch.inference_mode():
        for length in (int(v) for v in args.lengths.split(",")):
            r = compare(
                inputs(h, p, n, g, length), chunk, peer, length <= 8192, args.profile == length
            )
            report[str(length)] = r
            print(f"{length} tokens, one layer:")
            for key, v in r.items():
                print(f"  {key}: {v:.4g}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
