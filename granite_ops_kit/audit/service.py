"""What commands call: append an event, sign a checkpoint, verify the log."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

from granite_ops_kit.audit import checkpoint, merkle, records
from granite_ops_kit.audit.store import AuditStore, open_store
from granite_ops_kit.audit.verify import CHECKPOINT_EVENT, Verdict, verify


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


def sign_checkpoint(
    store: AuditStore, key_path: Path | None = None, origin: str | None = None
) -> dict:
    """Sign the Merkle root of every record so far and append it as a chained record."""
    key_path = key_path or default_key_path()
    key = checkpoint.load_or_create_key(key_path)
    origin = origin or f"gkit-audit/{socket.gethostname()}"
    leaves = [bytes.fromhex(r["hash"]) for r in store.records()]
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
    return store.append(event)


def verify_store(
    store: AuditStore, public_keys: dict[str, str] | None = None, min_size: int = 0
) -> Verdict:
    return verify(store.records(), public_keys, min_size)
