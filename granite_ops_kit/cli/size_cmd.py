"""`gkit size`: plan GPU memory for a Granite model. Pure Python: no torch import."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from granite_ops_kit.sizing.plan import Plan

from pathlib import Path

import typer

from granite_ops_kit.cli import output
from granite_ops_kit.cli.options import JSON_OPTION
from granite_ops_kit.units import format_bytes
from granite_runtime.spec.memory import PREFILL_CHUNK

GIB = 2**30


def _render_plan(con: Console, p: Plan) -> None:
    w, f = p.workload, p.per_gpu
    verdict = "[green]fits[/]" if p.fits else "[red]does not fit[/]"
    con.print(
        f"[bold]{p.model}[/] on {p.gpus} x {p.gpu.label} with {p.engine}: "
        f"{w.concurrency} sessions x {w.context:,} tokens {verdict}"
    )
    from rich.table import Table

    table = Table("per GPU", "bytes", show_header=True)
    for key in ("weights", "kv_cache", "state_cache", "activations", "non_torch", "total"):
        table.add_row(key.replace("_", " "), format_bytes(getattr(f, key)))
    table.add_row("budget", format_bytes(p.budget_per_gpu))
    con.print(table)
    limit = " (search limit)" if p.max_context_at_concurrency >= 1 << 22 else ""
    con.print(f"most sessions at {w.context:,} tokens: {p.max_sessions_at_context:,}")
    con.print(
        f"longest context at {w.concurrency} sessions: "
        f"{p.max_context_at_concurrency:,} tokens{limit} (the model is trained to "
        f"{p.model_max_context:,})"
    )
    con.print(f"fewest GPUs that fit: {p.fewest_gpus or 'more than 8'}")
    d = p.decode_bound
    con.print(
        f"decode bound from bandwidth: {d.tokens_per_s_per_session:,.0f} tok/s per "
        f"session, {d.tokens_per_s_total:,.0f} tok/s in all"
    )
    cmp = p.comparison
    con.print(
        f"against {cmp.against}: {cmp.less_memory_with_weights:.1%} less memory "
        f"with weights, {cmp.less_cache_memory:.1%} less cache memory"
    )
    con.print(f"[dim]{cmp.ibm_claim}[/]")
    if p.engine == "vllm":
        d = f.details
        con.print(
            f"vLLM: block size {d['block_size']}, {d['num_blocks']:,} blocks, "
            f"{d['blocks_per_request']} per request, max_num_seqs {d['max_num_seqs']}"
        )


def _render_sweep(con: Console, rows: list[dict], contexts: list[int]) -> None:
    from rich.table import Table

    table = Table("GPU", "GiB", *[f"sessions @ {c // 1024}k" for c in contexts])
    for row in rows:
        table.add_row(
            row["gpu"],
            str(row["memory_gib"]),
            *[str(row[str(c)]) if row[str(c)] is not None else "-" for c in contexts],
        )
    con.print(table)


def size(
    model: str = typer.Argument(
        ...,
        help="A checkpoint directory, a config.json, a catalog "
        "name (granite-4.0-h-small, h-micro, ...) or a Hub repo id.",
    ),
    gpu: str = typer.Option(
        "h100-80gb",
        help="GPU type: h100-80gb, h100-nvl-94gb, h200-141gb, "
        "b200-180gb, a100-40gb, a100-80gb, l40s, l4, a10g, rtx-4090, mi300x.",
    ),
    gpus: int = typer.Option(1, min=1, help="GPUs per replica (tensor parallel)."),
    context: int = typer.Option(32768, min=1, help="Tokens per session (prompt + output)."),
    concurrency: int = typer.Option(8, min=1, help="Concurrent sessions."),
    weights_dtype: str = typer.Option(
        "bf16", help="bf16, fp8, int8, int4, gguf-q4_k_m, gguf-q8_0."
    ),
    kv_dtype: str = typer.Option("bf16", help="bf16, fp8."),
    state_dtype: str = typer.Option("bf16", help="Mamba SSM state: bf16 or float32."),
    engine: str = typer.Option("gkit", help="gkit, vllm or llama.cpp allocation rules."),
    gpu_memory_utilization: float = typer.Option(
        0.9, min=0.1, max=1.0, help="Fraction of GPU memory to plan for."
    ),
    prefill_chunk: int = typer.Option(
        PREFILL_CHUNK, min=16, help="Prompt tokens per step, as `gkit serve --prefill-chunk`."
    ),
    plot: Path = typer.Option(None, help="Write a PNG of memory against context."),
    sweep: bool = typer.Option(False, help="Also tabulate sessions per GPU type at 4k/32k/128k."),
    json_: bool = JSON_OPTION,
) -> None:
    """Plan GPU memory: weights, KV cache and Mamba state; how many sessions of what context
    fit, on how many GPUs, and how a hybrid compares with a dense model.

    Exit 1 when the workload does not fit (the numbers say by how much).
    """
    from granite_ops_kit.cli.supply_cmds import recorder
    from granite_ops_kit.sizing import engines
    from granite_ops_kit.sizing import sweep as sweeps
    from granite_ops_kit.sizing.gpus import find_gpu
    from granite_ops_kit.sizing.plan import Request, plan_and_record, require_fit
    from granite_ops_kit.sizing.source import resolve

    output.use_json(json_)
    workload = engines.Workload(
        context, concurrency, weights_dtype, kv_dtype, state_dtype, gpu_memory_utilization,
        prefill_chunk,
    )  # fmt: skip
    engines.check_workload(engine, workload)
    request = Request(resolve(model), find_gpu(gpu), gpus, engine, workload)
    plan = plan_and_record(request, recorder())
    data = plan.to_json()
    if plot:
        data["plot"] = str(sweeps.plot(request, plot))
    if sweep:
        data["sweep"] = sweeps.sweep(request)

    def render(con: Console) -> None:
        _render_plan(con, plan)
        if sweep:
            _render_sweep(con, data["sweep"], list(sweeps.SWEEP_CONTEXTS))
        if plot:
            con.print(f"plot: {data['plot']}")

    require_fit(plan)
    output.emit(data, render)
