"""What must be true before anything is built or deployed.

1. The model's signature verifies *now*, with pinned trust inputs: the ones given to this
   command, or else the ones the last passing `gkit verify` of this model recorded. The
   whole `gkit verify` runs again (signature, statement, policy, every file's digest), so
   nothing in the model directory or its bundle decides before its signature is checked.
2. The verifying policy is the deploy's own (`--policy`): a policy that pins signers
   refuses a verification made with any other key, root or identity.
3. A passing `gkit verify` of this exact manifest is recorded in the audit log (the deploy
   policy's `require_verification`), and the approval rule holds.

Decisions read the hashed record JSON, never the store's indexed columns beside it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from granite_ops_kit.audit import attestation
from granite_ops_kit.errors import GkitError, PolicyDenied, UsageError
from granite_ops_kit.supply.trust import TrustInputs

VERIFIED = "artifact.verified"


@dataclass
class GateResult:
    manifest_digest: str | None
    verified_record: int | None  # seq of the artifact.verified record, if any
    allowed_unverified: bool
    approval: str
    signer: dict | None = None
    trust_source: str = ""
    failure: str = ""  # why verification failed, when --allow-unverified let it through
    trust: dict | None = None  # the pinned inputs it verified with (TrustInputs.to_record)


def _deploy_policy(path: Path | None) -> dict:
    """The shipped policies/deploy.json, or the file given with --deploy-policy."""
    from granite_ops_kit.policy.engine import policies_dir
    from granite_runtime.spec import bounded_read

    path = path or policies_dir() / "deploy.json"
    try:
        return bounded_read.read_json_object(path, 1 << 20, what="deploy policy")
    except bounded_read.UnsafeInput as e:
        raise UsageError(e.message) from None


def _verifications(store, subject: str) -> list[dict]:
    """Passing verifications of this model path, oldest first, by the records themselves."""
    return [
        r
        for r in store.records()
        if r.get("event") == VERIFIED
        and r.get("outcome") == "success"
        and (r.get("subject") or {}).get("name") == subject
    ]


def _pinned_inputs(given: TrustInputs | None, records: list[dict], model: Path) -> TrustInputs:
    if given is not None and given.given:
        return given
    if not records:
        raise PolicyDenied(
            f"no passing 'gkit verify' is recorded for {model}, and no trust input was given: "
            "verify it first (gkit verify MODEL --public-key K, or a policy), or pass the "
            "trust inputs here."
        )
    last = records[-1]
    trust = (last.get("details") or {}).get("trust")
    if not isinstance(trust, dict):
        raise PolicyDenied(
            f"audit record {last.get('seq')} (the last verification of {model}) holds no "
            "trust inputs (made by an older gkit): verify the model again."
        )
    host_key, key_path = attestation.host_public_key()
    if host_key is None or not attestation.attested(last, host_key):
        raise PolicyDenied(
            f"audit record {last.get('seq')} (the last verification of {model}) is not signed "
            f"by this host's audit key ({key_path}): whoever can write the audit store could "
            "have written its trust inputs. Pass them here (--public-key, --certificate-chain, "
            "or --identity and --issuer)."
        )
    return TrustInputs.from_record(trust, f"the trust inputs of audit record {last.get('seq')}")


def _require_signature(model: Path) -> None:
    from granite_ops_kit.supply.verify import default_signature

    signature = default_signature(model)
    if model.exists() and not os.path.lexists(signature):
        raise PolicyDenied(
            f"{model} is not signed ({signature} does not exist). An unsigned model was never "
            "verified; sign and verify it, or pass --allow-unverified."
        )


def _verify_now(model: Path, inputs: TrustInputs, policy: str, progress):
    from granite_ops_kit.supply.verify import VerifyRequest, verify

    return verify(VerifyRequest(model_path=model, trust=inputs, policy=policy), progress)


def check(
    model_path: Path,
    allow_unverified: bool,
    requester: str,
    *,
    trust: TrustInputs | None = None,
    policy: str = "default",
    progress: Callable | None = None,
    deploy_policy: Path | None = None,
    audit_url: str | None = None,
) -> GateResult:
    """Verify the model as it is now; find a recorded passing verification of its manifest
    in the audit store at `audit_url` (default: GKIT_AUDIT_DB, else the user's store)."""
    from granite_ops_kit.audit.approvals import deployment_allowed
    from granite_ops_kit.audit.store import open_store

    rules = _deploy_policy(deploy_policy)
    subject = str(model_path.resolve())
    store = open_store(audit_url)
    try:
        records = _verifications(store, subject)
        digest, signer, failure, source, used = None, None, "", "", None
        try:
            _require_signature(model_path)
            inputs = _pinned_inputs(trust, records, model_path)
            source = inputs.source
            result = _verify_now(model_path, inputs, policy, progress)
            digest, signer, used = result.manifest_digest, result.signer, result.trust
        except GkitError as e:
            if not allow_unverified:
                raise
            failure = e.message  # recorded with the deployment: --allow-unverified is audited
        record = next(
            (r for r in reversed(records) if (r.get("subject") or {}).get("digest") == digest),
            None,
        )
        required = rules.get("require_verification", True)
        if digest and record is None and required and not allow_unverified:
            raise PolicyDenied(
                f"{model_path} verifies (manifest {digest}), but no passing 'gkit verify' of "
                "this manifest is recorded; verify it first, or pass --allow-unverified "
                "(recorded in the audit log)."
            )
        approval = deployment_allowed(store, rules, subject, requester, digest)
        if not approval.allowed:
            raise PolicyDenied(f"deploy policy: {approval.reason}.")
        return GateResult(
            digest,
            record["seq"] if record else None,
            record is None,
            approval.reason,
            signer,
            source,
            failure,
            used,
        )
    finally:
        store.close()
