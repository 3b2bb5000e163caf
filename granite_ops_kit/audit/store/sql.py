"""The table both SQL backends keep, and the chaining step they share: read the head,
seal the next record, insert it with its columns derived from the record itself."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from granite_ops_kit.audit import records
from granite_ops_kit.errors import UsageError

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


def parse_rows(rows) -> Iterator[tuple[tuple, dict]]:
    for *columns, text in rows:
        yield tuple(columns), json.loads(text)


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
