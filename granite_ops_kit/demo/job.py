"""`gkit demo` as a function: the main job end to end on the tiny demo model.

Writes the model, signs it with a fresh demo key, verifies it, plans it on 2 GPUs, renders
the chart for 2 GPUs, serves it and asks one chat question, then checkpoints the audit log
and exports the auditor's report and evidence. Every step records into the demo's own audit
store (ROOT/audit.db), given to each step as its recorder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from granite_ops_kit.audit.events import StoreRecorder
from granite_ops_kit.audit.signer import signed_trees_path
from granite_ops_kit.demo.checkpoint import DemoModel, write_demo_model

if TYPE_CHECKING:
    from granite_ops_kit.deploy.results import DeployResult

AUDIT_KEY = "audit-signing-key.pem"
QUESTION = "What does a platform team check before it serves a model?"
PLAN = {"gpu": "h100-80gb", "gpus": 2, "context": 4096, "concurrency": 8}


@dataclass
class DemoRun:
    model: DemoModel
    steps: list[dict]

    def to_json(self) -> dict:
        return {"steps": self.steps, "model": self.model.to_json()}


def run_demo(root: Path, write_model: Callable[..., DemoModel] = write_demo_model) -> DemoRun:
    """Every step in `root` (replacing an earlier run's artifacts and audit log)."""
    from granite_ops_kit.demo.local_chat import ask_once
    from granite_ops_kit.errors import runtime_errors

    root.mkdir(parents=True, exist_ok=True)
    # each run is its own story: a new log, which the demo's key has signed nothing of
    (root / "audit.db").unlink(missing_ok=True)
    signed_trees_path(root / AUDIT_KEY).unlink(missing_ok=True)
    recorder = StoreRecorder(f"sqlite:///{root / 'audit.db'}")
    model = write_model(root / "model", preset="tiny-hybrid", seed=0, force=True)
    private, public = demo_key(root)
    verified = _sign_and_verify(model.path, private, public, recorder)
    plan = _plan(model.path, recorder)
    deployed = _render_chart(model.path, root, recorder)
    with runtime_errors():
        chat = ask_once(model.path, QUESTION)
    from granite_ops_kit.audit import events

    recorder.record(events.served(model.path, chat["url"], chat["response"]["usage"]))
    steps = _steps(model, public, verified, plan, deployed, chat, _audit(root))
    return DemoRun(model, steps)


def demo_key(root: Path) -> tuple[Path, Path]:
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


def _sign_and_verify(model_path: Path, private: Path, public: Path, recorder) -> dict:
    from granite_ops_kit.supply.sign import SignRequest, sign
    from granite_ops_kit.supply.trust import TrustInputs
    from granite_ops_kit.supply.verify import VerifyRequest, verify

    sign(SignRequest(model_path=model_path, key=private), recorder=recorder)
    req = VerifyRequest(model_path=model_path, trust=TrustInputs.from_files(public_key=public))
    return verify(req, recorder=recorder).to_json()


def _plan(model_path: Path, recorder):
    from granite_ops_kit.sizing.engines import Workload
    from granite_ops_kit.sizing.gpus import find_gpu
    from granite_ops_kit.sizing.plan import Request, plan_and_record
    from granite_ops_kit.sizing.source import resolve

    workload = Workload(PLAN["context"], PLAN["concurrency"])
    request = Request(
        resolve(str(model_path)), find_gpu(PLAN["gpu"]), PLAN["gpus"], "gkit", workload
    )
    return plan_and_record(request, recorder)


def _render_chart(model_path: Path, root: Path, recorder) -> DeployResult:
    """The chart for two GPUs; its verify step gets the trust inputs the gate verified with,
    in the release's own ConfigMap."""
    from granite_ops_kit.deploy.pipeline import DeployRequest, deploy

    req = DeployRequest(
        model_path=model_path,
        gpus=PLAN["gpus"],
        target="render",
        output_dir=root / "deploy",
        gpu=PLAN["gpu"],
        context=PLAN["context"],
        concurrency=PLAN["concurrency"],
    )
    return deploy(req, "gkit-demo", recorder)


def _audit(root: Path) -> dict:
    """Checkpoint the demo's audit log and export the auditor's report and evidence."""
    from granite_ops_kit.audit import checkpoint, export
    from granite_ops_kit.audit.service import chain_status, sign_checkpoint, verify_store
    from granite_ops_kit.audit.store import open_store

    store = open_store(f"sqlite:///{root / 'audit.db'}")
    key_path = root / AUDIT_KEY
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


def _steps(model, public, verified, plan, deployed, chat, report) -> list[dict]:
    return [
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
            "fits": plan.fits,
            "gpus": plan.gpus,
            "per_gpu_bytes": plan.per_gpu.total,
            "max_sessions_at_context": plan.max_sessions_at_context,
        },
        {
            "step": "deploy",
            "status": "done",
            "target": "render",
            "gpus": deployed.gpus,
            "chart": deployed.chart.chart,
            "values": deployed.chart.values,
            "rendered": deployed.chart.rendered,
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
