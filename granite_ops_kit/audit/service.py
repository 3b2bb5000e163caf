"""What commands call: append an event, sign a checkpoint, verify the log."""

from __future__ import annotations

import base64
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from granite_ops_kit.audit import checkpoint, merkle, records
from granite_ops_kit.audit.signer import Signer
from granite_ops_kit.audit.store import AuditStore, Query, open_store
from granite_ops_kit.audit.verify import ANY_NAME, CHECKPOINT_EVENT, verify_store
from granite_ops_kit.errors import UsageError


def default_key_path() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("gkit")) / "audit-signing-key.pem"


def record_event(event: records.Event, url: str | None = None) -> dict:
    """Append one event to the configured store (commands call this after each step)."""
    store = open_store(url)
    try:
        return store.append(event)
    finally:
        store.close()


def ensure_recordable(url: str | None = None) -> None:
    """Fail now, before a command acts, if its audit record could not be written."""
    store = open_store(url)
    try:
        store.probe_writable()
    finally:
        store.close()


def sign_checkpoint(
    store: AuditStore, key_path: Path | None = None, origin: str | None = None
) -> dict:
    """Sign the Merkle root of the whole log so far (pruned records included, through their
    signed summary) and append it as a chained record, once the log has passed the signer's
    checks (audit/signer.py)."""
    origin = origin or f"gkit-audit/{socket.gethostname()}"
    signer = Signer.for_store(store, key_path or default_key_path(), origin, create=True)
    key, leaves = signer.key, signer.leaves
    note = checkpoint.sign(origin, leaves, key, origin)
    root = base64.b64encode(merkle.root(leaves)).decode()
    event = records.Event(
        CHECKPOINT_EVENT,
        records.Subject(origin, digest=f"rfc6962:{root}"),
        "success",
        reason=f"signed checkpoint of {len(leaves)} records",
        details={
            "size": len(leaves),
            "root": root,
            "note": note,
            "key_name": origin,
            "public_key": checkpoint.public_pem(key),
        },
    )
    record = store.append(event)
    signer.signed(store, len(leaves))
    return record


def _named_key(path: Path) -> dict[str, str]:
    """A PEM file whose first line may be '# key-name'; without one it pins every name."""
    from granite_runtime.spec import bounded_read

    try:
        text = bounded_read.read_bytes(path, 1 << 16, what="public key").decode()
    except (bounded_read.UnsafeInput, UnicodeDecodeError) as bad:
        raise UsageError(getattr(bad, "message", f"{path} is not a PEM public key.")) from None
    try:
        checkpoint.fingerprint(text)
    except ValueError:
        raise UsageError(f"{path} is not a PEM public key.") from None
    first = text.splitlines()[0] if text else ""
    return {first[1:].strip() if first.startswith("#") else ANY_NAME: text}


def held_notes(paths: list[Path]) -> tuple[str, ...]:
    """The checkpoint notes an auditor holds, read bounded; each must parse as one."""
    from granite_runtime.spec import bounded_read

    notes = []
    for path in paths:
        try:
            text = bounded_read.read_bytes(path, 1 << 16, what="checkpoint").decode()
        except (bounded_read.UnsafeInput, UnicodeDecodeError) as bad:
            raise UsageError(getattr(bad, "message", f"{path} is not a checkpoint note.")) from None
        if checkpoint.parse_note(text) is None:
            raise UsageError(f"{path} is not a signed checkpoint note (C2SP).")
        notes.append(text)
    return tuple(notes)


def pinned_keys(paths: list[Path]) -> tuple[dict[str, str], str]:
    """The checkpoint keys to trust: the files given, else this host's own signing key (kept
    outside the store, so the store cannot vouch for itself). Returns the keys and a phrase
    saying where they came from."""
    keys: dict[str, str] = {}
    for path in paths:
        keys.update(_named_key(path))
    if keys:
        return keys, ", ".join(map(str, paths))
    local = default_key_path()
    if local.is_file():
        pem = checkpoint.public_pem(checkpoint.load_or_create_key(local))
        return {ANY_NAME: pem}, f"this host's signing key {local}"
    return {}, ""


DEFAULT_RETENTION_DAYS = 3 * 365


def prune(
    store: AuditStore,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    key_path: Path | None = None,
    now: datetime | None = None,
) -> dict | None:
    """Delete records older than the retention, keeping a signed summary (their hashes and
    a checkpoint over them) so the rest of the chain still verifies. None if nothing is due."""
    cutoff = (
        ((now or datetime.now(UTC)) - timedelta(days=retention_days))
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )
    due = list(store.records(Query(until=cutoff)))
    if not due:
        return None
    origin = f"gkit-audit/{socket.gethostname()}"
    signer = Signer.for_store(store, key_path or default_key_path(), origin, create=True)
    # records 1..last_seq go, so the summary holds every one of them, whatever their times
    # (hosts sharing a store may disagree on the clock)
    leaves = signer.leaves[: due[-1]["seq"]]
    summary = {
        "last_seq": due[-1]["seq"],
        "leaves": "".join(leaf.hex() for leaf in leaves),
        "note": checkpoint.sign(origin, leaves, signer.key, origin),
        "public_key": checkpoint.public_pem(signer.key),
    }
    removed = store.prune(summary)
    signer.signed(store, len(leaves))
    root = base64.b64encode(merkle.root(leaves)).decode()
    store.append(
        records.Event(
            "audit.pruned",
            records.Subject(origin, digest=f"rfc6962:{root}"),
            "success",
            reason=f"retention of {retention_days} days: removed records up to "
            f"{summary['last_seq']}, summarised by a signed checkpoint",
            details={"last_seq": summary["last_seq"], "removed": removed, "cutoff": cutoff},
        )
    )
    return summary


def chain_status(store: AuditStore, keys: dict[str, str], source: str) -> dict:
    """The verdict in one sentence for a report's first line: chain, checkpoints, signer."""
    verdict = verify_store(store, keys)
    if not verdict.ok:
        return {"ok": False, "text": f"Chain NOT verified: {verdict.problem}."}
    signer = ", ".join(f"sha256 {checkpoint.fingerprint(pem)}" for pem in keys.values())
    signatures = (
        f"checkpoint signatures checked against key {signer} ({source})"
        if keys
        else "checkpoint signatures NOT checked (no pinned key)"
    )
    return {
        "ok": bool(keys) or not verdict.checkpoints,
        "text": f"Chain verified: {verdict.records} records, {verdict.checkpoints} "
        f"checkpoint(s); {signatures}.",
    }
