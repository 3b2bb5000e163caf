"""Verify throughput: gkit against the reference `model-signing`, same model, same run.

Writes a synthetic model (default 3 GB: six 500 MB safetensors-sized files plus small JSON
and tokenizer files), signs it with `model_signing sign key`, warms the page cache, then
verifies it alternately with `model_signing verify key` and `gkit verify` (CLI to CLI, so
start-up counts for both, as it does for a user). Prints MB/s for each and the ratio, and
gkit's peak RSS. `--baseline REV` also times the gkit of an earlier commit (its tree
exported from git, run from source with this environment's packages) in the same rounds.
Usage: python bench/verify_throughput.py [--gb 3] [--runs 3] [--dir D] [--baseline REV]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from granite_ops_kit.demo.job import demo_key

BIN = Path(sys.executable).parent


def write_model(root: Path, total_bytes: int, big: int) -> int:
    root.mkdir(parents=True)
    per = (total_bytes - 20 * 100_000) // big
    block = os.urandom(8 << 20)
    for i in range(big):
        sub = root / f"part-{i % 10}" if big > 50 else root  # many files: nested, as in a repo
        sub.mkdir(exist_ok=True)
        with open(sub / f"model-{i + 1:05d}-of-{big:05d}.safetensors", "wb") as f:
            left = per
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
                block = block[1:] + block[:1]  # cheap variation between blocks
    for i in range(20):
        (root / f"extra-{i:02d}.json").write_bytes(os.urandom(100_000))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def export_tree(rev: str, dest: Path) -> str:
    """The project at `rev`, as files; returns the PYTHONPATH that runs it from source."""
    dest.mkdir()
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return f"{dest}{os.pathsep}{dest / 'runtime'}"


def timed(cmd: list[str], env=None) -> tuple[float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return dt, max(before, after)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=6, help="large files the bytes are split into")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--baseline", default=None, help="git revision of gkit to time as well")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="verify-bench-"))
    try:
        model = work / "model"
        size = write_model(model, int(args.gb * 1e9), args.files)
        priv, pub = demo_key(work)
        sig = model / "model.sig"
        dt, _ = timed(
            [
                str(BIN / "model_signing"),
                "sign",
                "key",
                str(model),
                "--private_key",
                str(priv),
                "--signature",
                str(sig),
            ]
        )
        nfiles = sum(1 for p in model.rglob("*") if p.is_file()) - 1
        print(
            f"model: {size / 1e9:.2f} GB in {nfiles} files; "
            f"model_signing sign: {size / dt / 1e6:,.0f} MB/s; cores: {os.cpu_count()}"
        )
        subprocess.run(
            f"find {model} -type f -exec cat {{}} + > /dev/null", shell=True, check=True
        )  # warm the page cache
        env = {**os.environ, "GKIT_AUDIT_DB": f"sqlite:///{work / 'audit.db'}"}
        ref_cmd = [
            str(BIN / "model_signing"),
            "verify",
            "key",
            str(model),
            "--public_key",
            str(pub),
            "--signature",
            str(sig),
        ]
        gkit_cmd = [str(BIN / "gkit"), "verify", str(model), "--public-key", str(pub)]
        base_cmd, base_env = None, None
        if args.baseline:
            base_env = {**env, "PYTHONPATH": export_tree(args.baseline, work / "baseline")}
            base_cmd = [sys.executable, "-m", "granite_ops_kit", *gkit_cmd[1:]]
        ref, ours, base, rss = [], [], [], 0
        for _ in range(args.runs):  # alternate, so drift in machine load hits every tool
            ref.append(timed(ref_cmd)[0])
            dt, peak = timed(gkit_cmd, env)
            ours.append(dt)
            rss = max(rss, peak)
            if base_cmd:
                base.append(timed(base_cmd, base_env)[0])
        r, g = min(ref), min(ours)
        print(f"{'tool':<16}{'best s':>8}{'MB/s':>10}   runs (s)")
        print(
            f"{'model_signing':<16}{r:>8.2f}{size / r / 1e6:>10,.0f}   "
            + " ".join(f"{x:.2f}" for x in ref)
        )
        print(
            f"{'gkit':<16}{g:>8.2f}{size / g / 1e6:>10,.0f}   " + " ".join(f"{x:.2f}" for x in ours)
        )
        if base:
            b = min(base)
            print(
                f"{'gkit ' + args.baseline[:10]:<16}{b:>8.2f}{size / b / 1e6:>10,.0f}   "
                + " ".join(f"{x:.2f}" for x in base)
            )
            print(f"ratio gkit / gkit {args.baseline[:10]} throughput: {b / g:.2f}x")
        print(
            f"ratio gkit / model_signing throughput: {r / g:.2f}x; "
            f"peak RSS of the children so far: {rss / 1024:.0f} MB"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
