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


def demo(
    output_dir: Path = typer.Option(
        Path("demo-out"), "--output", "-o", help="Where the demo writes its artifacts."
    ),
    json_: bool = JSON_OPTION,
) -> None:
    """Run the main job end to end on a built-in tiny Granite model.

    Writes the demo model, signs it with a generated demo key, verifies it, plans its memory
    on 2 GPUs, renders the Helm chart for 2 GPUs, serves the model locally with the
    built-in runtime and asks it one chat question, then exports the audit log's report and
    evidence. Every step is recorded in the demo's own audit log (OUTPUT/audit.db).
    """
    from granite_ops_kit.demo.job import run_demo

    output.use_json(json_)
    run = run_demo(output_dir.resolve(), _write_with_progress)
    output.emit(run.to_json(), _render_demo(run.steps, run.model))


def _render_demo(steps: list[dict], model):
    from granite_ops_kit.demo.job import QUESTION
    from granite_ops_kit.demo.presets import load_preset

    s = {step["step"]: step for step in steps}

    def render(con: Console) -> None:
        con.print(f"[bold]1. demo model[/]: {model.path} ({load_preset(model.preset).description})")
        con.print(f"[bold]2. sign[/]: {s['sign']['artifact']} (demo key {s['sign']['key']})")
        con.print(
            f"[bold]3. verify[/]: {s['verify']['manifest_digest']} passed policy "
            f"'{s['verify']['policy']}'"
        )
        con.print(
            f"[bold]4. size[/]: 8 sessions x 4,096 tokens on 2 x H100 80GB need "
            f"{format_bytes(s['size']['per_gpu_bytes'])} per GPU; up to "
            f"{s['size']['max_sessions_at_context']:,} sessions fit"
        )
        con.print(f"[bold]5. deploy[/] (render, 2 GPUs): chart {s['deploy']['chart']}")
        con.print(f"   values: {s['deploy']['values']}", markup=False)
        if s["deploy"]["rendered"]:
            con.print(f"   manifests: {s['deploy']['rendered']}", markup=False)
        serve = s["serve"]
        con.print(
            f"[bold]6. serve[/]: answered one chat request at {serve['url']} in "
            f"{serve['seconds']} s"
        )
        con.print(f"   user: {QUESTION}", markup=False)
        con.print(
            f"   assistant (random weights, so not meaningful): {serve['answer']!r}", markup=False
        )
        audit = s["audit"]
        con.print(
            f"[bold]7. audit[/]: {audit['records']} records in {audit['audit_db']}, "
            f"chain verified: {audit['verified']}"
        )
        con.print(f"   report: {audit['report']}", markup=False)
        con.print(f"   evidence (bash verify.sh inside it): {audit['evidence']}", markup=False)

    return render
