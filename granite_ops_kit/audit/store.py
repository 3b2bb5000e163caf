"""The audit store: one interface, two backends (SQLite by default, PostgreSQL for teams).

Appending reads the chain's head and inserts the next record inside one write transaction
(SQLite `BEGIN IMMEDIATE`, PostgreSQL a transaction-scoped advisory lock), and `prev_hash`
is UNIQUE, so concurrent writers queue rather than fork the chain. A record is durable once
`append` returns (SQLite WAL with synchronous=FULL; PostgreSQL commit).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from granite_ops_kit.audit import records
from granite_ops_kit.errors import CheckFailed, UsageError

ENV = "GKIT_AUDIT_DB"


@dataclass(frozen=True)
class Query:
    since: str | None = None  # ISO 8601 UTC, inclusive
    until: str | None = None  # exclusive
    event: str | None = None
    subject: str | None = None
    outcome: str | None = None


class AuditStore(Protocol):
    url: str

    def append(self, event: records.Event) -> dict: ...
    def append_many(self, events: list[records.Event]) -> list[dict]: ...
    def rows(self) -> Iterator[tuple[tuple, dict]]: ...
    def probe_writable(self) -> None: ...
    def records(self, query: Query = Query()) -> Iterator[dict]: ...
    def count(self) -> int: ...
    def prune(self, summary: dict) -> int: ...
    def anchor(self) -> dict | None: ...
    def close(self) -> None: ...


def default_url() -> str:
    from platformdirs import user_data_dir

    return os.environ.get(ENV) or f"sqlite:///{Path(user_data_dir('gkit')) / 'audit.db'}"


def open_store(url: str | None = None, *, create: bool = True) -> AuditStore:
    """The store at `url`; a reading command passes create=False, so a mistyped path is an
    error rather than a new, empty (and so "verified") log."""
    url = url or default_url()
    if url.startswith(("postgresql://", "postgres://")):
        from granite_ops_kit.audit.postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.is_file():
            raise UsageError(
                f"audit store {path} does not exist (check --audit-db or GKIT_AUDIT_DB); "
                "reading commands never create one."
            )
        return SQLiteStore(path)
    raise UsageError(f"audit database '{url}' is neither sqlite:///PATH nor postgresql://...")


def matches(record: dict, query: Query) -> bool:
    """The filter, applied to the hashed record itself (never to the columns beside it)."""
    subject = record.get("subject") or {}
    time = record.get("time", "")
    return (
        (query.since is None or time >= query.since)
        and (query.until is None or time < query.until)
        and (query.event is None or record.get("event") == query.event)
        and (query.subject is None or subject.get("name") == query.subject)
        and (query.outcome is None or record.get("outcome") == query.outcome)
    )


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


class SQLiteStore:
    def __init__(self, path: Path):
        self.url = f"sqlite:///{path}"
        self.path = path
        self.timeout = lock_timeout()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=self.timeout, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA_SQL)
        except sqlite3.OperationalError as bad:
            raise self._locked(bad) from None
        except sqlite3.DatabaseError as bad:
            raise CheckFailed(f"audit store {path} cannot be opened: {bad}.") from None

    def _locked(self, bad: Exception) -> CheckFailed:
        if "locked" in str(bad) or "busy" in str(bad):
            return CheckFailed(
                f"audit store {self.path} is locked by another writer (waited {self.timeout:g} "
                "s, GKIT_AUDIT_LOCK_TIMEOUT); nothing was recorded."
            )
        return CheckFailed(f"audit store {self.path} cannot be written: {bad}.")

    def probe_writable(self) -> None:
        """Take and release the write lock: a command that must record what it does checks
        this before it acts, so an action is never left without its record."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("ROLLBACK")
        except sqlite3.OperationalError as bad:
            raise self._locked(bad) from None

    def append(self, event: records.Event) -> dict:
        return self.append_many([event])[0]

    def append_many(self, events: list[records.Event]) -> list[dict]:
        """Several events in one transaction (one fsync), still one record each, chained."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as bad:
            raise self._locked(bad) from None
        try:
            out = [append_at_head(self.db.execute, event, "?") for event in events]
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return out

    def rows(self) -> Iterator[tuple[tuple, dict]]:
        """Every record with the columns stored beside it, for `audit verify` to compare."""
        yield from parse_rows(self.db.execute(ROW_SQL))

    def records(self, query: Query = Query()) -> Iterator[dict]:
        return (r for _, r in self.rows() if matches(r, query))

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM audit_records").fetchone()[0]

    def prune(self, summary: dict) -> int:
        """Store the signed summary and delete the records it covers, atomically."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                "INSERT INTO audit_pruned VALUES (?, ?, ?, ?)", [summary[c] for c in PRUNED_COLUMNS]
            )
            gone = self.db.execute(
                "DELETE FROM audit_records WHERE seq <= ?", (summary["last_seq"],)
            ).rowcount
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return gone

    def anchor(self) -> dict | None:
        row = self.db.execute(
            f"SELECT {', '.join(PRUNED_COLUMNS)} FROM audit_pruned ORDER BY last_seq DESC LIMIT 1"
        ).fetchone()
        return dict(zip(PRUNED_COLUMNS, row, strict=True)) if row else None

    def close(self) -> None:
        self.db.close()


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
    execute(f"INSERT INTO audit_records VALUES ({', '.join([mark] * 8)})", _row(record))
    return record


def _row(record: dict) -> tuple:
    """Columns derived from the record being written, never passed in beside it."""
    return (*column_values(record), json.dumps(record, sort_keys=True))
