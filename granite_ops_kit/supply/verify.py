"""`gkit verify`: signature -> signer -> statement -> policy -> files -> digests, in order.

Each step can only narrow: the first failure stops the pipeline with one sentence saying
what is wrong. Policy runs before hashing, so a model the policy refuses (pickle weights, a
signer not on the allow-list) fails in milliseconds, not after hashing gigabytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

from granite_ops_kit.audit import attestation, events, records
from granite_ops_kit.errors import GkitError, PolicyDenied, UsageError, VerificationFailed
from granite_ops_kit.policy import engine
from granite_ops_kit.supply import bundle as bundle_io
from granite_ops_kit.supply import hashing, measure, model_card, model_files, statement, trust

SIGNATURE_NAME = "model.sig"


@dataclass
class VerifyRequest:
    """A verification: the model, its signature, and the pinned trust inputs."""

    model_path: Path
    signature: Path | None = None
    trust: trust.TrustInputs = field(default_factory=trust.TrustInputs)
    ignore_paths: list[str] = field(default_factory=list)
    policy: str = "default"
    expect_digest: str | None = None
    # what the record names beside the model: the commit a pull resolved, the Hub owner
    revision: str | None = None
    supplier: str | None = None


@dataclass
class VerifyResult:
    model_path: str
    signature: str
    method: str
    signer: dict
    manifest_digest: str  # names, digests and serialization (SignedManifest.manifest_digest)
    subject_digest: str  # OMS's subject digest (digests only), as model_signing prints it
    predicate_type: str
    serialization: dict
    files: int
    bytes: int
    policy: dict
    trust: dict  # the pinned inputs used, as TrustInputs.to_record gives them
    model: dict  # name, licence and supplier as declared (supply.model_card)
    resources: list[dict]  # every signed resource: name, algorithm, digest
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)


def default_signature(model_path: Path) -> Path:
    return (model_path if model_path.is_dir() else model_path.parent) / SIGNATURE_NAME


def _pinned(inputs: trust.TrustInputs, policy: engine.Policy) -> trust.TrustInputs:
    """The request's inputs, with the policy's Sigstore identity and issuer where unset."""
    return replace(
        inputs,
        identities=list(inputs.identities) or policy.sigstore_identities,
        issuer=inputs.issuer or policy.sigstore_issuer,
        accept_signing_time_validity=policy.accept_signing_time_validity,
    )


def _ignores(req: VerifyRequest, signature: Path, signed: statement.SignedManifest) -> list[str]:
    return [
        *signed.ignore_paths,
        *req.ignore_paths,
        *model_files.signature_ignore(req.model_path, signature),
    ]


def _facts(signer: trust.Signer, files, signed: statement.SignedManifest) -> dict:
    return {
        "signature": {
            "method": signer.method,
            "identities": signer.identities,
            "issuer": signer.issuer,
            "key_fingerprint": signer.key_fingerprint,
            "root_fingerprint": signer.root_fingerprint,
        },
        "files": [
            {
                "name": f.name,
                "ext": PurePosixPath(f.path.name).suffix.lower(),
                "size": f.size,
                "symlink": f.is_symlink,
            }
            for f in files
        ],
        "manifest": {"digest": signed.manifest_digest, "legacy": signed.legacy},
    }


def compare(
    expected: dict[str, tuple[str, str]], actual: dict[str, str], algorithm: str, model: Path
) -> None:
    """Name the first difference the way a person would describe it."""
    for name, (alg, _) in expected.items():
        if alg != algorithm:
            raise VerificationFailed(
                f"{model}: resource '{name}' was hashed with {alg}, but the signature's "
                f"serialization says {algorithm}."
            )
    missing = [n for n in expected if n not in actual]
    added = [n for n in actual if n not in expected]
    by_digest = {d: n for n, d in actual.items() if n in added}
    for name in missing:
        if expected[name][1] in by_digest:
            raise VerificationFailed(
                f"{model}: '{name}' was renamed to '{by_digest[expected[name][1]]}' after signing."
            )
    if missing:
        raise VerificationFailed(f"{model}: signed file(s) missing: {', '.join(missing)}.")
    if added:
        raise VerificationFailed(
            f"{model}: file(s) not covered by the signature: {', '.join(added)}."
        )
    for name, digest in actual.items():
        if expected[name][1] != digest:
            raise VerificationFailed(
                f"{model}: '{name}' has changed since it was signed (digest {digest[:16]}..., "
                f"signed {expected[name][1][:16]}...)."
            )


def _check_shards(count: int, signed: statement.SignedManifest, model: Path) -> None:
    """Refuse pieces that cannot match the statement before they are made (a forged shard
    size would otherwise make millions of them)."""
    if signed.method == "shards" and count > len(signed.resources):
        shard = signed.shard_size or hashing.DEFAULT_SHARD_SIZE
        raise VerificationFailed(
            f"{model}: the signature lists {len(signed.resources):,} shard(s) of "
            f"{shard:,} bytes, but the files make {count:,}: they are not the files signed."
        )


def verify(
    req: VerifyRequest,
    progress: Callable[[int, int], Callable[[int], None]] | None = None,
    recorder: events.Recorder | None = None,
) -> VerifyResult:
    """Verify a model; raises VerificationFailed / PolicyDenied / UsageError on failure.
    With a recorder, the outcome is recorded: artifact.verified, or for a failed check
    (exit 1; a usage error is no evidence) artifact.verification_failed.

    `progress(total_bytes, pieces)` may return a callback that receives bytes hashed."""
    try:
        result = _verified(req, progress)
    except GkitError as error:
        if recorder is not None and error.exit_code == 1:
            recorder.record(events.verification_failed(req.model_path, error, _policy_ref(req)))
        raise
    if req.supplier:
        result.model["supplier"] = req.supplier
    if recorder is not None:
        claim = attestation.attest_with_host_key(
            result.model_path, result.manifest_digest, records.scrub(result.trust)
        )  # fmt: skip
        recorder.record(events.verified(result, req.revision, claim))
    return result


def _policy_ref(req: VerifyRequest) -> dict | None:
    """The policy a failed verification ran under, where it could be read at all."""
    try:
        policy = engine.load(req.policy)
    except GkitError:
        return None
    return {"id": policy.id, "sha256": policy.sha256}


def _verified(req: VerifyRequest, progress) -> VerifyResult:
    start = time.perf_counter()
    if not req.model_path.exists():
        raise UsageError(f"model path {req.model_path} does not exist.")
    policy = engine.load(req.policy)
    signature = req.signature or default_signature(req.model_path)
    bundle = bundle_io.read(signature, follow_links=req.signature is not None)
    inputs = _pinned(req.trust, policy)
    signer = trust.check(bundle, inputs)
    signed = statement.parse(bundle.payload)  # only now: its signature has verified
    if req.expect_digest and req.expect_digest != signed.manifest_digest:
        raise VerificationFailed(
            f"{req.model_path} is signed with manifest {signed.manifest_digest}, not the "
            f"expected {req.expect_digest} (a different model from the one verified before)."
        )
    try:
        hash_type = hashing.canonical_hash_type(signed.hash_type)
    except UsageError as e:
        raise VerificationFailed(f"{signature}: {e.message}") from None
    files = measure.list_model(
        req.model_path, _ignores(req, signature, signed), allow_symlinks=policy.allow_symlinks
    )
    decision = engine.evaluate(policy, _facts(signer, files, signed))
    if not decision.allow:
        raise PolicyDenied(
            f"policy '{policy.id}' denies {req.model_path}: " + "; ".join(decision.deny) + ".",
            details={"deny": decision.deny, "policy": policy.id},
        )
    shard = signed.shard_size or hashing.DEFAULT_SHARD_SIZE
    measured = measure.measure(
        files,
        method=signed.method,
        hash_type=hash_type,
        shard_size=shard,
        progress=progress,
        check_pieces=lambda count: _check_shards(count, signed, req.model_path),
    )
    compare(signed.resources, measured.digests, measured.algorithm, req.model_path)
    return VerifyResult(
        model_path=str(req.model_path.resolve()),
        signature=str(signature),
        method=signer.method,
        signer=asdict(signer),
        manifest_digest=signed.manifest_digest,
        subject_digest=f"sha256:{signed.subject_digest}",
        predicate_type=signed.predicate_type,
        serialization={
            "method": signed.method,
            "hash_type": hash_type,
            **({"shard_size": shard} if signed.method == "shards" else {}),
        },
        files=len(files),
        bytes=measured.bytes,
        policy={
            "id": policy.id,
            "sha256": policy.sha256,
            "allow": True,
            "reasons": decision.reasons,
        },
        trust=inputs.to_record(),
        model=model_card.declared(req.model_path, asdict(signer), signed.model_name),
        resources=[
            {"name": n, "algorithm": alg, "digest": d} for n, (alg, d) in signed.resources.items()
        ],
        seconds=round(time.perf_counter() - start, 3),
    )
