"""Audit records: what happened, to what, by whom, with which evidence, hashed canonically.

A record's hash is SHA-256 over its RFC 8785 canonical JSON without the `hash` field, and
every record carries the hash of the one before it, so editing, removing, reordering or
inserting any record breaks the chain at a place `gkit audit verify` can name.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import rfc8785

from granite_ops_kit import __version__

SCHEMA = "gkit.audit/v1"
GENESIS = "0" * 64
SAFE_INT = 2**53 - 1  # RFC 8785 numbers are IEEE doubles
# Keys whose values must never reach the log, whatever an event's author passes.
SECRET_KEYS = ("token", "password", "secret", "api_key", "apikey", "private_key", "authorization")


@dataclass
class Subject:
    name: str
    revision: str | None = None
    digest: str | None = None


@dataclass
class Event:
    """What a command reports; the store turns it into a chained Record."""

    event: str
    subject: Subject
    outcome: str  # "success", "failure" or "denied"
    reason: str = ""
    policy_id: str | None = None
    policy_hash: str | None = None
    evidence: dict[str, str] = field(default_factory=dict)  # name -> "sha256:..."
    details: dict = field(default_factory=dict)
    actor: str = field(default_factory=lambda: current_actor())
    host: str = field(default_factory=socket.gethostname)
    tool_version: str = __version__


def current_actor() -> str:
    """Who acts: GKIT_ACTOR when a pipeline sets it (its service identity), else the OS user."""
    import os

    if os.environ.get("GKIT_ACTOR"):
        return os.environ["GKIT_ACTOR"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _controls_file() -> Path:
    from granite_ops_kit.policy.engine import policies_dir

    return policies_dir() / "iso42001-controls.json"


@lru_cache(maxsize=1)
def control_map() -> dict[str, list[str]]:
    return json.loads(_controls_file().read_text("utf-8"))["events"]


def controls_for(event: str) -> list[str]:
    """The ISO/IEC 42001 clauses and Annex A controls an event evidences (policies/ data)."""
    return control_map().get(event, [])


def scrub(value):
    """Replace the values of secret-looking keys, at any depth, with a marker; write integers
    beyond RFC 8785's exact range (2^53 - 1) as strings so they keep every digit."""
    if isinstance(value, dict):
        return {
            k: ("[redacted]" if any(s in k.lower() for s in SECRET_KEYS) else scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > SAFE_INT:
        return str(value)
    return value


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def body(event: Event, seq: int, prev_hash: str, time: str) -> dict:
    """The record without its hash: the exact object that is hashed."""
    data = asdict(event)
    return {
        "schema": SCHEMA,
        "seq": seq,
        "time": time,
        "prev_hash": prev_hash,
        **scrub(data),
        "controls": controls_for(event.event),
    }


def _has_float(value) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


def canonical(record: dict) -> bytes:
    """RFC 8785 canonical JSON of the record without `hash`.

    Without floats (nearly every record), RFC 8785 is exactly Python's sorted, compact,
    non-ASCII-preserving json.dumps (keys here are ASCII, so UTF-16 and code-point order
    agree); that path is ~10x faster than the general one (tests check they agree).
    """
    body = {k: v for k, v in record.items() if k != "hash"}
    if _has_float(body):
        return rfc8785.dumps(body)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: dict) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def seal(event: Event, seq: int, prev_hash: str) -> dict:
    record = body(event, seq, prev_hash, now())
    record["hash"] = record_hash(record)
    return record


# What every record gkit writes holds, by type: what readers (log, export, the gate) index.
TEXT_FIELDS = ("schema", "time", "prev_hash", "hash", "event", "outcome", "reason", "actor")
TEXT_FIELDS += ("host", "tool_version")
OPTIONAL_TEXT_FIELDS = ("policy_id", "policy_hash")
TEXT_OR_NONE = (str, type(None))
MAX_RECORD_DEPTH = 32  # records nest 5 deep (details of an approval): 32 is generous


def shape_problem(record) -> str | None:
    """Why a stored record is not one gkit writes (a JSON object whose fields have the types
    `body` gives them), or None. Checked before anything reads its fields, so an edited
    store is a sentence naming the record, never a crash (non-finite numbers and nesting
    are refused while it is parsed: store/sql.parse_record)."""
    if not isinstance(record, dict):
        return "it is not a JSON object"
    if not isinstance(record.get("seq"), int) or isinstance(record.get("seq"), bool):
        return "its seq is not a whole number"
    for name in TEXT_FIELDS:
        if not isinstance(record.get(name), str):
            return f"its '{name}' is not text"
    for name in OPTIONAL_TEXT_FIELDS:
        if not isinstance(record.get(name), TEXT_OR_NONE):
            return f"its '{name}' is not text"
    subject = record.get("subject")
    if not isinstance(subject, dict) or not isinstance(subject.get("name"), str):
        return "its subject has no name"
    if not (
        isinstance(subject.get("revision"), TEXT_OR_NONE)
        and isinstance(subject.get("digest"), TEXT_OR_NONE)
    ):
        return "its subject's revision or digest is not text"
    for name in ("details", "evidence"):
        if not isinstance(record.get(name), dict):
            return f"its '{name}' is not a JSON object"
    controls = record.get("controls")
    if not isinstance(controls, list) or not all(isinstance(c, str) for c in controls):
        return "its controls are not a list of text"
    return None
