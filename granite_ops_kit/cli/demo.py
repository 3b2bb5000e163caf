"""`gkit demo-model` and `gkit demo`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

from pathlib import Path

import typer

from granite_ops_kit.cli import output
from granite_ops_kit.cli.options import JSON_OPTION
from granite_ops_kit.units import format_bytes, parse_bytes

# numpy, tokenizers and the checkpoint writer are imported inside the commands so that
# `gkit --help` stays fast.

PROGRESS_THRESHOLD = 64 * 2**20  # show a bar for anything over 64 MiB


def _write_with_progress(dest: Path, **kwargs):
    from granite_ops_kit.demo.checkpoint import write_demo_model

    bar = output.progress_bytes("writing weights")
    task = {}

    def on_start(total: int) -> None:
        if total > PROGRESS_THRESHOLD:
            bar.start()
            task["id"] = bar.add_task("weights", total=total)

    def on_bytes(n: int) -> None:
        if "id" in task:
            bar.advance(task["id"], n)

    try:
        return write_demo_model(dest, on_start=on_start, on_bytes=on_bytes, **kwargs)
    finally:
        bar.stop()


def demo_model(
    directory: Path = typer.Argument(..., help="Where to write the checkpoint (created)."),
    preset: str = typer.Option(
        "tiny-hybrid",
        "--preset",
        "-p",
        help="tiny-hybrid (a few MB: Mamba, attention, MoE), tiny-dense (all attention), or a "
        "catalog model at its real shape, e.g. granite-4.0-h-micro (GBs).",
    ),
    seed: int = typer.Option(0, "--seed", help="The same seed writes the same bytes."),
    dtype: str = typer.Option(None, "--dtype", help="bfloat16 (default), float16 or float32."),
    max_shard_size: str = typer.Option(
        None,
        "--max-shard-size",
        help="Split weights into shards of at most this size (default 5GB), e.g. 2GB, 1MiB.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace DIRECTORY if it has files."),
    json_: bool = JSON_OPTION,
) -> None:
    """Write a deterministic Granite 4.0 checkpoint (random weights) in Hugging Face layout.

    The checkpoint has config.json (model_type granitemoehybrid), safetensors weights,
    tokenizer.json, tokenizer_config.json with a chat template, and generation_config.json;
    it loads in transformers and in gkit's runtime. Use it to try every gkit step without
    downloading a real model. Presets: tiny-hybrid, tiny-dense, and the Granite 4.0 catalog.
    """
    from granite_ops_kit.demo.checkpoint import DEFAULT_MAX_SHARD_BYTES

    output.use_json(json_)
    shard = parse_bytes(max_shard_size) if max_shard_size else DEFAULT_MAX_SHARD_BYTES
    model = _write_with_progress(
        directory, preset=preset, seed=seed, dtype=dtype, max_shard_bytes=shard, force=force
    )

    def render(con: Console) -> None:
        con.print(f"wrote {model.preset} to {model.path}")
        con.print(
            f"  {model.parameters:,} parameters, {model.dtype}, "
            f"{format_bytes(model.weight_bytes)} of weights, seed {model.seed}"
        )
        con.print(f"  files: {', '.join(model.files)}")

    output.emit(model.to_json(), render)


# What `gkit demo` will run once each capability lands; printed so the user sees the path.
LATER_STEPS = [
    ("sign", "sign the model with a generated demo key (OpenSSF Model Signing)"),
    ("verify", "verify the signature and the default policy"),
    ("deploy", "render the Helm chart for 2 GPUs"),
]
QUESTION = "What does a platform team check before it serves a model?"


def _size_for_two_gpus(model_path: Path) -> dict:
    from granite_ops_kit.sizing.engines import Workload
    from granite_ops_kit.sizing.gpus import find_gpu
    from granite_ops_kit.sizing.plan import Request, make_plan
    from granite_ops_kit.sizing.source import resolve

    return make_plan(
        Request(resolve(str(model_path)), find_gpu("h100-80gb"), 2, "gkit", Workload(4096, 8))
    )


def _audit(output_dir: Path, model_path: Path, plan: dict, chat: dict) -> dict:
    """Record the demo's steps in its own audit log, checkpoint it, export the reports."""
    from granite_ops_kit.audit import export
    from granite_ops_kit.audit.records import Event, Subject
    from granite_ops_kit.audit.service import sign_checkpoint, verify_store
    from granite_ops_kit.audit.store import open_store

    root = output_dir.resolve()
    store = open_store(f"sqlite:///{root / 'audit.db'}")
    try:
        subject = Subject(model_path.name, "demo-seed-0")
        store.append(
            Event(
                "capacity.planned",
                subject,
                "success" if plan["fits"] else "denied",
                reason=f"2 x h100-80gb, 8 sessions x 4096 tokens, "
                f"{plan['per_gpu']['total']} bytes per GPU",
            )
        )
        store.append(
            Event(
                "runtime.served",
                subject,
                "success",
                reason=f"answered one chat request at {chat['url']}",
                details={"usage": chat["response"]["usage"]},
            )
        )
        sign_checkpoint(store, root / "audit-signing-key.pem", "gkit-demo")
        rows = list(store.records())
        html = export.export(rows, rows, "html", root / "audit-report.html", "gkit demo audit")
        evidence = export.export(rows, rows, "evidence", root / "audit-evidence.zip")
        verdict = verify_store(store)
    finally:
        store.close()
    return {
        "audit_db": str(root / "audit.db"),
        "report": str(html),
        "evidence": str(evidence),
        "records": verdict.records,
        "verified": verdict.ok,
    }


def demo(
    output_dir: Path = typer.Option(
        Path("demo-out"), "--output", "-o", help="Where the demo writes its artifacts."
    ),
    json_: bool = JSON_OPTION,
) -> None:
    """Run the main job end to end on a built-in tiny Granite model.

    Today: writes the demo model, plans its memory on 2 GPUs, serves it locally with the
    built-in runtime and asks it one chat question, records the steps in an audit log in the
    output folder and exports its report and evidence. As gkit grows, the same command
    signs, verifies and renders the chart, printing where each artifact is.
    """
    from granite_ops_kit.cli.runtime_cmds import runtime_errors
    from granite_ops_kit.demo.local_chat import ask_once
    from granite_ops_kit.demo.presets import load_preset

    output.use_json(json_)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = _write_with_progress(output_dir / "model", preset="tiny-hybrid", seed=0, force=True)
    plan = _size_for_two_gpus(model.path)
    with runtime_errors():
        chat = ask_once(model.path, QUESTION)
    reply = chat["response"]["choices"][0]["message"]["content"]
    report = _audit(output_dir, model.path, plan, chat)
    steps = [
        {"step": "demo-model", "status": "done", "artifact": str(model.path)},
        {
            "step": "size",
            "status": "done",
            "fits": plan["fits"],
            "gpus": plan["gpus"],
            "per_gpu_bytes": plan["per_gpu"]["total"],
            "max_sessions_at_context": plan["max_sessions_at_context"],
        },
        {
            "step": "serve",
            "status": "done",
            "url": chat["url"],
            "question": QUESTION,
            "answer": reply,
            "usage": chat["response"]["usage"],
            "seconds": chat["seconds"],
        },
        {"step": "audit", "status": "done", **report},
    ]
    steps += [{"step": name, "status": "not built yet", "will": what} for name, what in LATER_STEPS]

    def render(con: Console) -> None:
        con.print(f"[bold]1. demo model[/]: {model.path} ({load_preset(model.preset).description})")
        con.print(
            f"[bold]2. size[/]: 8 sessions x 4,096 tokens on 2 x H100 80GB need "
            f"{format_bytes(plan['per_gpu']['total'])} per GPU; up to "
            f"{plan['max_sessions_at_context']:,} sessions fit"
        )
        con.print(
            f"[bold]3. serve[/]: answered one chat request at {chat['url']} in {chat['seconds']} s"
        )
        con.print(f"   user: {QUESTION}", markup=False)
        con.print(f"   assistant (random weights, so not meaningful): {reply!r}", markup=False)
        con.print(
            f"[bold]4. audit[/]: {report['records']} records in {report['audit_db']}, "
            f"chain verified: {report['verified']}"
        )
        con.print(f"   report: {report['report']}", markup=False)
        con.print(f"   evidence (bash verify.sh inside it): {report['evidence']}", markup=False)
        for i, (name, what) in enumerate(LATER_STEPS, start=5):
            con.print(f"{i}. {name} [dim](not built yet)[/]: will {what}")

    output.emit({"steps": steps, "model": model.to_json()}, render)
