"""What every audit store offers (AuditStore) and how records are selected (Query)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from granite_ops_kit.audit import records


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
