"""What each step's audit event says, and the Recorder the steps write it through.

The steps themselves (supply.verify, supply.sign, supply.pull, sizing, deploy) record their
own events through a Recorder they are given; commands only parse, call and print. Each
builder here takes the step's typed result, so the wording of the log lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from granite_ops_kit.audit import records
from granite_ops_kit.errors import GkitError

# The builders take the steps' result dataclasses (supply.verify.VerifyResult, supply.sign.
# SignResult, supply.pull.PullResult, ...) by duck type: the steps import this module, so
# it imports none of theirs.


class Recorder(Protocol):
    url: str | None  # the store its records go to, which a step that reads the log reads

    def record(self, event: records.Event) -> None: ...
    def ensure_recordable(self) -> None: ...


@dataclass(frozen=True)
class StoreRecorder:
    """Records into the audit store at `url` (None: GKIT_AUDIT_DB, else the default)."""

    url: str | None = None

    def record(self, event: records.Event) -> None:
        from granite_ops_kit.audit.service import record_event

        record_event(event, self.url)

    def ensure_recordable(self) -> None:
        """Fail now, before a step acts, if its record could not be written."""
        from granite_ops_kit.audit.service import ensure_recordable

        ensure_recordable(self.url)


def event(
    name: str,
    subject: str,
    outcome: str,
    reason: str,
    *,
    digest: str | None = None,
    revision: str | None = None,
    details: dict | None = None,
    policy: dict | None = None,
) -> records.Event:
    """One event about `subject`, with the policy that decided it where there was one."""
    return records.Event(
        name,
        records.Subject(subject, revision=revision, digest=digest),
        outcome,
        reason=reason,
        policy_id=(policy or {}).get("id"),
        policy_hash=f"sha256:{policy['sha256']}" if policy and policy.get("sha256") else None,
        details=details or {},
    )


def signer_name(signer: dict) -> str:
    if signer.get("identities"):
        return ", ".join(signer["identities"])
    if signer.get("subject"):
        return signer["subject"]
    return f"key {signer['key_fingerprint'][:16]}"


def verified(result, revision: str | None = None, attestation: dict | None = None) -> records.Event:
    """`attestation`: this host's signature on the trust inputs (audit/attestation.py)."""
    return event(
        "artifact.verified",
        result.model_path,
        "success",
        f"{result.method} signature by {signer_name(result.signer)} verified; policy "
        f"'{result.policy['id']}' allows it",
        digest=result.manifest_digest,
        revision=revision,
        details={
            "signer": result.signer,
            "files": result.files,
            "bytes": result.bytes,
            "serialization": result.serialization,
            "reasons": result.policy["reasons"],
            "predicate_type": result.predicate_type,
            "subject_digest": result.subject_digest,
            "trust": result.trust,
            **({"trust_attestation": attestation} if attestation else {}),
            "model": result.model,
            "resources": result.resources,
        },
        policy=result.policy,
    )


def verification_failed(model_path: Path, error: GkitError, policy: dict | None) -> records.Event:
    return event(
        "artifact.verification_failed",
        str(model_path.resolve()),
        "failure",
        error.message,
        details={"kind": error.kind},
        policy=policy,
    )


def signed(result) -> records.Event:
    return event(
        "artifact.signed",
        result.model_path,
        "success",
        f"signed with {result.method} {result.key_fingerprint[:16]}",
        digest=result.manifest_digest,
        details={
            "signature": result.signature,
            "serialization": result.serialization,
            "files": result.files,
            "bytes": result.bytes,
            "key_fingerprint": result.key_fingerprint,
        },
    )


def pulled(result) -> records.Event:
    return event(
        "artifact.pulled",
        f"hf://{result.repo_id}",
        "success",
        f"{result.files} files at commit {result.commit}",
        revision=result.commit,
        details={"dest": result.dest, "bytes": result.bytes, "requested": result.revision},
    )


def capacity_planned(request, plan) -> records.Event:
    """capacity.planned (ISO/IEC 42001 A.4.5), recorded before the answer is shown."""
    w = request.workload
    return event(
        "capacity.planned",
        request.shape.name,
        "success" if plan.fits else "denied",
        f"{request.gpus} x {request.gpu.name}, {w.concurrency} sessions x {w.context:,} tokens, "
        f"{request.engine}: {plan.per_gpu.total:,} of {plan.budget_per_gpu:,} bytes "
        "per GPU",
        details={
            "gpu": request.gpu.name,
            "gpus": request.gpus,
            "engine": request.engine,
            "context": w.context,
            "concurrency": w.concurrency,
            "fits": plan.fits,
            "per_gpu_bytes": plan.per_gpu.total,
            "budget_per_gpu": plan.budget_per_gpu,
        },
    )


def image_built(built, req) -> records.Event:
    """image.built: `built` is the deploy.results.BuiltImage, `req` the image.BuildRequest."""
    return event(
        "image.built",
        built.tag,
        "success",
        f"{built.accelerator} image {built.image_id} from {built.base_image}",
        digest=built.image_id,
        details={
            "model_manifest_digest": built.model_manifest_digest,
            "verification": req.verification,
            "bake_model": req.bake_model,
            "accelerator": built.accelerator,
            "labels": built.labels,
        },
    )


def deployment(name: str, model_path: Path, where: str, result: dict, digest, failure):
    """deployment.rendered / deployment.applied, with the outcome observed (failures too)."""
    return event(
        name,
        str(model_path.resolve()),
        "failure" if failure else "success",
        f"{where}: {failure.message}" if failure else f"{where}, {result['verification']}",
        digest=digest,
        details={**result, "failure": failure.message} if failure else result,
    )


def deployment_removed(model_path: Path, result: dict) -> records.Event:
    return event(
        "deployment.removed",
        str(model_path.resolve()),
        "success",
        f"podman: removed the pod of {result['play_file']}",
        details=result,
    )


def runtime(name: str, model_path: Path, reason: str, engine, gpus: int) -> records.Event:
    """runtime.started / runtime.stopped of `gkit serve`."""
    return event(
        name,
        str(model_path.resolve()),
        "success",
        reason,
        details={
            "device": str(engine.device),
            "gpus": gpus,
            "slots": engine.max_num_seqs,
            "max_model_len": engine.max_model_len,
        },
    )


def served(model_path: Path, url: str, usage: dict) -> records.Event:
    return event(
        "runtime.served",
        str(model_path),
        "success",
        f"answered one chat request at {url}",
        details={"usage": usage},
    )
