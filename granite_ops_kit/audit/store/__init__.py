"""The audit store: one interface, two backends (SQLite by default, PostgreSQL for teams).

Appending reads the chain's head and inserts the next record inside one write transaction
(SQLite `BEGIN IMMEDIATE`, PostgreSQL a transaction-scoped advisory lock), and `prev_hash`
is UNIQUE, so concurrent writers queue rather than fork the chain. A record is durable once
`append` returns (SQLite WAL with synchronous=FULL; PostgreSQL commit).
"""

from __future__ import annotations

import os
from pathlib import Path

from granite_ops_kit.audit.store.protocol import AuditStore, Query, matches
from granite_ops_kit.audit.store.sql import column_problem
from granite_ops_kit.errors import UsageError

__all__ = ["AuditStore", "Query", "column_problem", "default_url", "matches", "open_store"]

ENV = "GKIT_AUDIT_DB"


def default_url() -> str:
    from platformdirs import user_data_dir

    return os.environ.get(ENV) or f"sqlite:///{Path(user_data_dir('gkit')) / 'audit.db'}"


def open_store(url: str | None = None, *, create: bool = True) -> AuditStore:
    """The store at `url`; a reading command passes create=False, so a mistyped path is an
    error rather than a new, empty (and so "verified") log."""
    url = url or default_url()
    if url.startswith(("postgresql://", "postgres://")):
        from granite_ops_kit.audit.store.postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.is_file():
            raise UsageError(
                f"audit store {path} does not exist (check --audit-db or GKIT_AUDIT_DB); "
                "reading commands never create one."
            )
        from granite_ops_kit.audit.store.sqlite import SQLiteStore

        return SQLiteStore(path)
    raise UsageError(f"audit database '{url}' is neither sqlite:///PATH nor postgresql://...")
