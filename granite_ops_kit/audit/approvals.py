"""Approvals and segregation of duties (ISO/IEC 42001 A.3.2): who may release what.

An approval is an `approval.recorded` record naming a subject (and, when given, the exact
digest approved) and the approver's role. A deploy that a policy guards needs an approval
of that subject, in that role, by someone other than the person requesting the deploy.
"""

from __future__ import annotations

from dataclasses import dataclass

from granite_ops_kit.audit.records import Event, Subject
from granite_ops_kit.audit.store import AuditStore, Query

APPROVAL = "approval.recorded"


def approve(
    store: AuditStore, subject: str, role: str, digest: str | None = None, reason: str = ""
) -> dict:
    return store.append(
        Event(
            APPROVAL,
            Subject(subject, digest=digest),
            "success",
            reason=reason or f"approved as {role}",
            details={"role": role},
        )
    )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    approval_seq: int | None = None


def segregation_of_duties(
    store: AuditStore,
    subject: str,
    requester: str,
    role: str | None = None,
    digest: str | None = None,
) -> Decision:
    """Allowed when someone other than `requester` approved `subject` (in `role`, for
    `digest`, when given). The reason says what is missing when it is not."""
    approvals = list(store.records(Query(event=APPROVAL, subject=subject)))
    if digest:
        approvals = [a for a in approvals if a["subject"].get("digest") == digest]
    if role:
        approvals = [a for a in approvals if a["details"].get("role") == role]
    if not approvals:
        wanted = f" as {role}" if role else ""
        return Decision(
            False, f"{subject} has no approval{wanted}" + (f" for {digest}" if digest else "")
        )
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
        f"(record {chosen['seq']})",
        chosen["seq"],
    )


def deployment_allowed(
    store: AuditStore, policy: dict, subject: str, requester: str, digest: str | None = None
) -> Decision:
    """Apply a deploy policy's `require_approval` rule (policies/deploy.json)."""
    rule = policy.get("require_approval") or {}
    if not rule.get("enabled"):
        return Decision(True, "the policy requires no approval")
    decision = segregation_of_duties(
        store,
        subject,
        requester if rule.get("by_someone_other_than_the_requester", True) else "",
        rule.get("role"),
        digest if rule.get("for_the_exact_digest", True) else None,
    )
    return decision
