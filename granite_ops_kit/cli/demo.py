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


QUESTION = "What does a platform team check before it serves a model?"


def _demo_key(root: Path) -> tuple[Path, Path]:
    """A fresh EC P-256 demo signing key (a real one belongs in a KMS or an HSM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = root / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = keys / "demo-signing-key.pem", keys / "demo-signing-key.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _sign_and_verify(model_path: Path, private: Path, public: Path) -> dict:
    from granite_ops_kit.cli.supply_cmds import _verify, record
    from granite_ops_kit.supply.sign import SignRequest, sign
    from granite_ops_kit.supply.trust import TrustInputs
    from granite_ops_kit.supply.verify import VerifyRequest

    signed = sign(SignRequest(model_path, private))
    record(
        "artifact.signed",
        signed.model_path,
        "success",
        f"signed with demo key {signed.key_fingerprint[:16]}",
        digest=signed.manifest_digest,
        details={"signature": signed.signature},
    )
    return _verify(VerifyRequest(model_path, trust=TrustInputs.from_files(public_key=public)))


def _render_chart(model_path: Path, output_dir: Path) -> dict:
    """The chart for two GPUs; its verify step gets the trust inputs the gate verified with,
    in the release's own ConfigMap."""
    from granite_ops_kit.deploy.pipeline import DeployRequest, deploy

    req = DeployRequest(
        model_path=model_path,
        gpus=2,
        target="render",
        output_dir=output_dir / "deploy",
        gpu="h100-80gb",
        context=4096,
        concurrency=8,
    )
    return deploy(req, "gkit-demo")


def _record_plan_and_chat(model_path: Path, plan: dict, chat: dict) -> None:
    from granite_ops_kit.cli.supply_cmds import record

    record(
        "capacity.planned",
        str(model_path),
        "success" if plan["fits"] else "denied",
        f"2 x h100-80gb, 8 sessions x 4096 tokens, {plan['per_gpu']['total']} bytes per GPU",
    )
    record(
        "runtime.served",
        str(model_path),
        "success",
        f"answered one chat request at {chat['url']}",
        details={"usage": chat["response"]["usage"]},
    )


def _size_for_two_gpus(model_path: Path) -> dict:
    from granite_ops_kit.sizing.engines import Workload
    from granite_ops_kit.sizing.gpus import find_gpu
    from granite_ops_kit.sizing.plan import Request, make_plan

    return make_plan(
        Request(resolve_shape(model_path), find_gpu("h100-80gb"), 2, "gkit", Workload(4096, 8))
    )


def resolve_shape(model_path: Path):
    from granite_ops_kit.sizing.source import resolve

    return resolve(str(model_path))


def _audit(root: Path) -> dict:
    """Checkpoint the demo's audit log and export the auditor's report and evidence."""
    from granite_ops_kit.audit import checkpoint, export
    from granite_ops_kit.audit.service import chain_status, sign_checkpoint, verify_store
    from granite_ops_kit.audit.store import open_store

    store = open_store(f"sqlite:///{root / 'audit.db'}")
    key_path = root / "audit-signing-key.pem"
    try:
        sign_checkpoint(store, key_path, "gkit-demo")
        rows = list(store.records())
        signing = (checkpoint.load_key(key_path), "gkit-demo")
        pins = {"*": checkpoint.public_pem(signing[0])}
        status = chain_status(store, pins, f"the demo's key {key_path}")
        html = export.export(
            rows, rows, "html", root / "audit-report.html", "gkit demo audit", status=status
        )
        evidence = export.export(
            rows, rows, "evidence", root / "audit-evidence.zip", signing=signing
        )
        verdict = verify_store(store, pins)
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

    Writes the demo model, signs it with a generated demo key, verifies it, plans its memory
    on 2 GPUs, renders the Helm chart for 2 GPUs, serves the model locally with the
    built-in runtime and asks it one chat question, then exports the audit log's report and
    evidence. Every step is recorded in the demo's own audit log (OUTPUT/audit.db).
    """
    import os

    output.use_json(json_)
    root = output_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "audit.db").unlink(missing_ok=True)  # each run is its own story
    previous = os.environ.get("GKIT_AUDIT_DB")
    os.environ["GKIT_AUDIT_DB"] = f"sqlite:///{root / 'audit.db'}"
    try:
        steps, model = _run_steps(root)
    finally:
        if previous is None:
            os.environ.pop("GKIT_AUDIT_DB", None)
        else:
            os.environ["GKIT_AUDIT_DB"] = previous
    output.emit({"steps": steps, "model": model.to_json()}, _render_demo(steps, model))


def _run_steps(root: Path):
    from granite_ops_kit.cli.runtime_cmds import runtime_errors
    from granite_ops_kit.demo.local_chat import ask_once

    model = _write_with_progress(root / "model", preset="tiny-hybrid", seed=0, force=True)
    private, public = _demo_key(root)
    verified = _sign_and_verify(model.path, private, public)
    plan = _size_for_two_gpus(model.path)
    chart = _render_chart(model.path, root)
    with runtime_errors():
        chat = ask_once(model.path, QUESTION)
    _record_plan_and_chat(model.path, plan, chat)
    report = _audit(root)
    steps = [
        {"step": "demo-model", "status": "done", "artifact": str(model.path)},
        {"step": "sign", "status": "done", "artifact": verified["signature"], "key": str(public)},
        {
            "step": "verify",
            "status": "done",
            "manifest_digest": verified["manifest_digest"],
            "policy": verified["policy"]["id"],
        },
        {
            "step": "size",
            "status": "done",
            "fits": plan["fits"],
            "gpus": plan["gpus"],
            "per_gpu_bytes": plan["per_gpu"]["total"],
            "max_sessions_at_context": plan["max_sessions_at_context"],
        },
        {
            "step": "deploy",
            "status": "done",
            "target": "render",
            "gpus": chart["gpus"],
            "chart": chart["chart"],
            "values": chart["values"],
            "rendered": chart["rendered"],
        },
        {
            "step": "serve",
            "status": "done",
            "url": chat["url"],
            "question": QUESTION,
            "answer": chat["response"]["choices"][0]["message"]["content"],
            "usage": chat["response"]["usage"],
            "seconds": chat["seconds"],
        },
        {"step": "audit", "status": "done", **report},
    ]
    return steps, model


def _render_demo(steps: list[dict], model):
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
