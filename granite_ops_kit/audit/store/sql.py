"""The table both SQL backends keep, and the chaining step they share: read the head,
seal the next record, insert it with its columns derived from the record itself."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator

from granite_ops_kit.audit import records
from granite_ops_kit.errors import AuditChainBroken, UsageError
from granite_runtime.spec import bounded_read

# The indexed columns, in table order; each is a copy of a field of the hashed record.
COLUMNS = ("seq", "time", "event", "subject", "outcome", "prev_hash", "hash")
ROW_SQL = f"SELECT {', '.join(COLUMNS)}, record FROM audit_records ORDER BY seq"


def column_values(record: dict) -> tuple:
    return (
        record["seq"],
        record["time"],
        record["event"],
        record["subject"]["name"],
        record["outcome"],
        record["prev_hash"],
        record["hash"],
    )


def column_problem(columns: tuple, record: dict) -> str | None:
    """A column that does not say what the hashed record says, named."""
    try:
        expected = column_values(record)
    except (KeyError, TypeError):
        return f"record {columns[0]}: the stored record lacks a field its columns index"
    for name, got, want in zip(COLUMNS, columns, expected, strict=True):
        if got != want:
            return (
                f"record {columns[0]}: its '{name}' column says {got!r} but the hashed record "
                f"says {want!r} (the column was edited)"
            )
    return None


def _edited(store: str, what: str, why: str) -> AuditChainBroken:
    return AuditChainBroken(
        f"{store}: {what} is not what gkit writes ({why}); the store was edited outside gkit."
    )


class _NotFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: RFC 8785 cannot hash it
        raise _NotFinite
    return value


def _no_constant(name: str):  # NaN, Infinity, -Infinity
    raise _NotFinite


def _load(text: str):
    """json.loads of a stored record, every failure a reason; the reasons for records a
    gkit never writes (non-finite numbers, over-deep nesting) are found while parsing, or by
    one walk only where the text has brackets enough to nest that deep."""
    try:
        record = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except _NotFinite:
        return None, "it holds a number that is not finite"
    except RecursionError:
        return None, f"it is nested deeper than {records.MAX_RECORD_DEPTH} levels"
    except json.JSONDecodeError as e:
        return None, f"it is not valid JSON ({e.msg}, line {e.lineno} column {e.colno})"
    except ValueError:  # an integer past Python's digit limit
        return None, "it holds a number too long to read"
    depth = records.MAX_RECORD_DEPTH
    if text.count("{") + text.count("[") > depth and bounded_read.too_deep(record, depth):
        return None, f"it is nested deeper than {depth} levels"
    return record, None


def parse_record(store: str, seq, text) -> dict:
    """The hashed record stored as `text` beside its columns: a JSON object of the shape
    gkit writes (records.shape_problem), or one sentence naming the record. The column and
    the record are the attacker's to write: neither a blob, nor nesting that would exhaust
    the parser, nor a record missing a field its readers index gets further than this."""
    what = f"record {seq}"
    if not isinstance(text, str):
        raise _edited(store, what, "it is not text")
    record, problem = _load(text)
    problem = problem or records.shape_problem(record)
    if problem:
        raise _edited(store, what, problem)
    return record


def parse_rows(store: str, rows) -> Iterator[tuple[tuple, dict]]:
    for *columns, text in rows:
        yield tuple(columns), parse_record(store, columns[0], text)


def parse_anchor(store: str, row) -> dict | None:
    """The newest signed summary of pruned records, checked for shape the same way: its
    leaves are the hex of 32-byte hashes, one per pruned record."""
    if row is None:
        return None
    anchor = dict(zip(PRUNED_COLUMNS, row, strict=True))
    what = f"the summary of pruned records 1..{anchor['last_seq']}"
    if not all(isinstance(anchor[c], str) for c in ("leaves", "note", "public_key")):
        raise _edited(store, what, "a column of it is not text")
    leaves = anchor["leaves"]
    if (
        anchor["last_seq"] < 1
        or len(leaves) != 64 * anchor["last_seq"]
        or any(c not in "0123456789abcdef" for c in leaves)
    ):
        raise _edited(store, what, "its leaves are not one SHA-256 hex digest per record")
    return anchor


SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    event TEXT NOT NULL,
    subject TEXT NOT NULL,
    outcome TEXT NOT NULL,
    prev_hash TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit_records (time);
CREATE TABLE IF NOT EXISTS audit_pruned (
    last_seq INTEGER PRIMARY KEY,
    leaves TEXT NOT NULL,
    note TEXT NOT NULL,
    public_key TEXT NOT NULL
);
"""
PRUNED_COLUMNS = ("last_seq", "leaves", "note", "public_key")


def lock_timeout() -> float:
    """Seconds a writer waits for another one's lock (GKIT_AUDIT_LOCK_TIMEOUT, default 60)."""
    try:
        return max(0.0, float(os.environ.get("GKIT_AUDIT_LOCK_TIMEOUT", "60")))
    except ValueError:
        raise UsageError("GKIT_AUDIT_LOCK_TIMEOUT must be a number of seconds.") from None


def append_at_head(execute, event: records.Event, mark: str) -> dict:
    """Read the chain's head and insert the next record; the caller holds the write lock."""
    head = execute("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()
    if head is None:  # empty, or every record pruned: continue from the signed summary
        head = execute(
            "SELECT last_seq, substr(leaves, length(leaves) - 63) FROM audit_pruned "
            "ORDER BY last_seq DESC LIMIT 1"
        ).fetchone()
    seq, prev = (head[0] + 1, head[1]) if head else (1, records.GENESIS)
    record = records.seal(event, seq, prev)
    execute(f"INSERT INTO audit_records VALUES ({', '.join([mark] * 8)})", row_of(record))
    return record


def row_of(record: dict) -> tuple:
    """Columns derived from the record being written, never passed in beside it."""
    return (*column_values(record), json.dumps(record, sort_keys=True))
