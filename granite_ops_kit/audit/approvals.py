"""Approvals and segregation of duties (ISO/IEC 42001 A.3.2): who may release what.

An approval is an `approval.recorded` record naming a subject (and, when given, the exact
digest approved) and the approver's role. A deploy that a policy guards needs an approval
of that subject, in that role, by someone other than the person requesting the deploy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from granite_ops_kit.audit import approval_statement
from granite_ops_kit.audit.records import Event, Subject, now
from granite_ops_kit.audit.store import AuditStore, Query

APPROVAL = "approval.recorded"


def approve(
    store: AuditStore,
    subject: str,
    role: str,
    digest: str | None = None,
    reason: str = "",
    key: Path | None = None,
) -> dict:
    """Record an approval; with `key`, signed by the approver (else self-declared)."""
    details: dict = {"role": role, "identity": "self-declared"}
    if key is not None:
        signed = approval_statement.sign(key, subject, digest, role, now())
        details.update(identity=f"signed by key sha256 {signed['key_sha256']}", signed=signed)
    return store.append(
        Event(
            APPROVAL,
            Subject(subject, digest=digest),
            "success",
            reason=reason or f"approved as {role} ({details['identity']})",
            details=details,
        )
    )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    approval_seq: int | None = None


def _candidates(store: AuditStore, subject: str, digest: str | None) -> list[dict]:
    approvals = list(store.records(Query(event=APPROVAL, subject=subject)))
    if digest:
        approvals = [a for a in approvals if a["subject"].get("digest") == digest]
    return approvals


def _missing(subject: str, role: str | None, digest: str | None, kind: str = "") -> str:
    wanted = f" as {role}" if role else ""
    return f"{subject} has no {kind}approval{wanted}" + (f" for {digest}" if digest else "")


def segregation_of_duties(
    store: AuditStore,
    subject: str,
    requester: str,
    role: str | None = None,
    digest: str | None = None,
) -> Decision:
    """Allowed when someone other than `requester` approved `subject` (in `role`, for
    `digest`, when given). Identities are as declared: see `signed_segregation_of_duties`
    for approvals that prove who gave them."""
    approvals = _candidates(store, subject, digest)
    if role:
        approvals = [a for a in approvals if a["details"].get("role") == role]
    if not approvals:
        return Decision(False, _missing(subject, role, digest))
    others = [a for a in approvals if a["actor"] != requester]
    if not others:
        return Decision(
            False,
            f"{subject} was approved only by {requester}, who requests the "
            "deploy; segregation of duties needs a second person",
        )
    chosen = others[-1]
    return Decision(
        True,
        f"approved by {chosen['actor']} as {chosen['details'].get('role')} "
        f"(record {chosen['seq']}, self-declared)",
        chosen["seq"],
    )


def signed_segregation_of_duties(
    store: AuditStore,
    subject: str,
    requester: str,
    role: str | None,
    digest: str | None,
    listed: list[approval_statement.Approver],
) -> Decision:
    """Allowed only by an approval signed with a key the deploy policy lists, by an
    approver listed in `role` whose name is not the requester's."""
    why_not = []
    for record in reversed(_candidates(store, subject, digest)):
        got = approval_statement.check(record, listed)
        if isinstance(got, str):
            why_not.append(
                f"record {record['seq']} is {got}"
                if "self" in got
                else f"record {record['seq']}: {got}"
            )
        elif role and (got.role != role or role not in got.approver.roles):
            why_not.append(f"record {record['seq']}: {got.approver.name} is not listed as {role}")
        elif got.approver.name == requester:
            why_not.append(f"record {record['seq']} is by {requester}, who requests the deploy")
        else:
            return Decision(
                True,
                f"approved by {got.approver.name} as {got.role} (record {record['seq']}, signed "
                f"with key sha256 {got.approver.fingerprint[:16]}...)",
                record["seq"],
            )
    reason = _missing(subject, role, digest, "signed ")
    return Decision(False, reason + (f" ({'; '.join(why_not[:3])})" if why_not else ""))


def deployment_allowed(
    store: AuditStore, policy: dict, subject: str, requester: str, digest: str | None = None
) -> Decision:
    """Apply a deploy policy's `require_approval` rule (policies/deploy.json)."""
    rule = policy.get("require_approval") or {}
    if not rule.get("enabled"):
        return Decision(True, "the policy requires no approval")
    other = requester if rule.get("by_someone_other_than_the_requester", True) else ""
    exact = digest if rule.get("for_the_exact_digest", True) else None
    if rule.get("signed"):
        listed = approval_statement.approvers(rule)
        return signed_segregation_of_duties(store, subject, other, rule.get("role"), exact, listed)
    return segregation_of_duties(store, subject, other, rule.get("role"), exact)
