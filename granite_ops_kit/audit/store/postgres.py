"""The PostgreSQL backend: the same table and the same chaining rule as SQLite.

Many hosts and pods append to one log; a transaction-scoped advisory lock serialises the
read-head-then-insert step, and `prev_hash UNIQUE` would refuse a fork even without it.
"""

from __future__ import annotations

from collections.abc import Iterator

from granite_ops_kit.audit import records
from granite_ops_kit.audit.store.protocol import Query, matches
from granite_ops_kit.audit.store.sql import (
    PRUNED_COLUMNS,
    ROW_SQL,
    SCHEMA_SQL,
    append_at_head,
    parse_anchor,
    parse_rows,
)
from granite_ops_kit.errors import UsageError

LOCK_KEY = 0x676B6974  # "gkit"


class PostgresStore:
    def __init__(self, url: str):
        try:
            import psycopg
        except ImportError:
            raise UsageError(
                "a postgresql:// audit database needs psycopg: pip install 'psycopg[binary]'."
            ) from None
        self.url = url.split("@")[-1]  # never keep credentials in what we print
        try:
            self.db = psycopg.connect(url, autocommit=False)
        except psycopg.OperationalError as bad:
            raise UsageError(
                f"cannot connect to the audit database at {self.url}: "
                f"{str(bad).strip().splitlines()[0]}"
            ) from None
        with self.db.transaction():
            self.db.execute(SCHEMA_SQL.replace("INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY"))

    def probe_writable(self) -> None:
        """Connecting proved the server answers; appends serialise on an advisory lock."""

    def append(self, event: records.Event) -> dict:
        return self.append_many([event])[0]

    def append_many(self, events: list[records.Event]) -> list[dict]:
        with self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            return [append_at_head(self.db.execute, event, "%s") for event in events]

    def rows(self) -> Iterator[tuple[tuple, dict]]:
        with self.db.transaction():
            rows = self.db.execute(ROW_SQL).fetchall()
        yield from parse_rows(self.url, rows)

    def records(self, query: Query = Query()) -> Iterator[dict]:
        return (r for _, r in self.rows() if matches(r, query))

    def count(self) -> int:
        with self.db.transaction():
            return self.db.execute("SELECT count(*) FROM audit_records").fetchone()[0]

    def prune(self, summary: dict) -> int:
        with self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            self.db.execute(
                "INSERT INTO audit_pruned VALUES (%s, %s, %s, %s)",
                [summary[c] for c in PRUNED_COLUMNS],
            )
            return self.db.execute(
                "DELETE FROM audit_records WHERE seq <= %s", (summary["last_seq"],)
            ).rowcount

    def anchor(self) -> dict | None:
        with self.db.transaction():
            row = self.db.execute(
                f"SELECT {', '.join(PRUNED_COLUMNS)} FROM audit_pruned "
                "ORDER BY last_seq DESC LIMIT 1"
            ).fetchone()
        return parse_anchor(self.url, row)

    def close(self) -> None:
        self.db.close()
