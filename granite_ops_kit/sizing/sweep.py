"""Tables and plots over many GPUs and contexts, built from single plans."""

from __future__ import annotations

from pathlib import Path

from granite_ops_kit.errors import UsageError
from granite_ops_kit.sizing import engines
from granite_ops_kit.sizing.gpus import CATALOG
from granite_ops_kit.sizing.plan import (
    Request,
    fits,
    largest_fitting,
    parse_config,
    valid_tp,
    with_change,
)
from granite_ops_kit.sizing.source import comparison_shape
from granite_runtime.spec import memory
from granite_runtime.spec.config import GraniteConfig

SWEEP_CONTEXTS = (4096, 32768, 131072)


def sweep(r: Request, contexts=SWEEP_CONTEXTS) -> list[dict]:
    """Most concurrent sessions for each catalog GPU (at r.gpus) and context."""
    c = parse_config(r.shape)
    rows = []
    for gpu in CATALOG.values():
        row = {"gpu": gpu.name, "memory_gib": round(gpu.memory_bytes / 2**30, 1)}
        for ctx in contexts:
            req = Request(r.shape, gpu, r.gpus, r.engine, with_change(r.workload, context=ctx))
            row[str(ctx)] = (
                largest_fitting(
                    lambda n, req=req: fits(
                        c, req, with_change(req.workload, concurrency=n), r.gpus
                    )[0]
                )
                if valid_tp(c, r.gpus)
                else None
            )
        rows.append(row)
    return rows


def _model_gib(config: dict, name: str, ctx: int, r: Request) -> float:
    c = GraniteConfig.from_dict(config, name)
    w = r.workload
    weights = memory.weight_bytes_per_gpu(c, engines.BITS[w.weights_dtype], 1)
    cache = w.concurrency * (
        ctx * memory.kv_bytes_per_token(c) + memory.state_bytes_per_sequence(c)
    )
    return (weights + cache) / 2**30


def plot(r: Request, path: Path) -> Path:
    """Memory (weights + caches) against context for the hybrid and its comparison model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'granite-ops-kit[plot]'.") from None
    other_name, other = comparison_shape(r.shape)
    contexts = [2**k for k in range(10, 21)]  # 1k .. 1M tokens
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name, config in ((r.shape.name, r.shape.config), (other_name, other)):
        ax.plot(
            contexts, [_model_gib(config, name, x, r) for x in contexts], marker="o", label=name
        )
    capacity = r.gpu.memory_bytes * r.gpus / 2**30
    ax.axhline(
        capacity,
        color="crimson",
        linestyle="--",
        label=f"{r.gpus} x {r.gpu.label} ({capacity:.0f} GiB)",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context per session (tokens)")
    ax.set_ylabel("weights + KV + Mamba state (GiB)")
    ax.set_title(
        f"{r.workload.concurrency} concurrent sessions, {r.workload.weights_dtype} weights"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
