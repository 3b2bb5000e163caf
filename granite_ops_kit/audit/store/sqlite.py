"""The SQLite backend (the default): one file, WAL with synchronous=FULL, `BEGIN IMMEDIATE`
around the read-head-then-insert step."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from granite_ops_kit.audit import records
from granite_ops_kit.audit.store.protocol import Query, matches
from granite_ops_kit.audit.store.sql import (
    PRUNED_COLUMNS,
    ROW_SQL,
    SCHEMA_SQL,
    append_at_head,
    lock_timeout,
    parse_anchor,
    parse_rows,
)
from granite_ops_kit.errors import CheckFailed


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
        yield from parse_rows(self.url, self.db.execute(ROW_SQL))

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
        return parse_anchor(self.url, row)

    def close(self) -> None:
        self.db.close()
