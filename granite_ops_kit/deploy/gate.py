"""What must be true before anything is deployed: this exact manifest passed `gkit verify`
(recorded in the audit log), and the deploy policy's approval rule holds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from granite_ops_kit.errors import PolicyDenied, UsageError, VerificationFailed


@dataclass
class GateResult:
    manifest_digest: str | None
    verified_record: int | None  # seq of the artifact.verified record, if any
    allowed_unverified: bool
    approval: str


def _deploy_policy() -> dict:
    from granite_ops_kit.policy.engine import policies_dir

    return json.loads((policies_dir() / "deploy.json").read_text())


def _last_verification(store, digest: str) -> dict | None:
    from granite_ops_kit.audit.store import Query

    found = None
    for record in store.records(Query(event="artifact.verified", outcome="success")):
        if record["subject"].get("digest") == digest:
            found = record
    return found


def check(model_path: Path, allow_unverified: bool, requester: str) -> GateResult:
    """Hash the model as it is now; find a passing verification of that manifest."""
    from granite_ops_kit.audit.approvals import deployment_allowed
    from granite_ops_kit.audit.store import open_store
    from granite_ops_kit.supply.verify import current_manifest_digest

    policy = _deploy_policy()
    store = open_store()
    try:
        try:
            digest = current_manifest_digest(model_path)
        except UsageError as e:  # no signature: it cannot have passed verification
            if not allow_unverified:
                raise PolicyDenied(
                    f"{e.message} An unsigned model was never verified; sign "
                    "and verify it, or pass --allow-unverified."
                ) from None
            digest = None
        except VerificationFailed:
            if not allow_unverified:
                raise
            digest = None  # changed since signing: only --allow-unverified gets here
        record = _last_verification(store, digest) if digest else None
        if record is None and policy.get("require_verification", True) and not allow_unverified:
            raise PolicyDenied(
                f"no passing 'gkit verify' is recorded for {model_path} (manifest {digest}); "
                "verify it first, or pass --allow-unverified (recorded in the audit log)."
            )
        approval = deployment_allowed(store, policy, str(model_path.resolve()), requester, digest)
        if not approval.allowed:
            raise PolicyDenied(f"deploy policy: {approval.reason}.")
        return GateResult(
            digest, record["seq"] if record else None, record is None, approval.reason
        )
    finally:
        store.close()
