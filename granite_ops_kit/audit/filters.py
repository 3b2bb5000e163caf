"""What a person may ask the log for, checked before anything is read.

A mistyped filter must not look like an answer: `--outcome failed` (the value is
`failure`) would match nothing and exit 0. Every filter is checked against the values the
log can hold, and times are ISO 8601 or a span back from now.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from granite_ops_kit.audit.store import Query
from granite_ops_kit.errors import UsageError

OUTCOMES = ("success", "failure", "denied")
SPAN = re.compile(r"^([1-9][0-9]{0,5})([dhm])$")
SPAN_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def events() -> list[str]:
    """Every event gkit writes: the ISO/IEC 42001 mapping in policies/ lists them all."""
    from granite_ops_kit.audit.records import control_map

    return sorted(control_map())


def check_event(event: str) -> str:
    known = events()
    if event not in known:
        raise UsageError(f"--event '{event}' is not an audit event; events: {', '.join(known)}.")
    return event


def check_outcome(outcome: str) -> str:
    if outcome not in OUTCOMES:
        raise UsageError(f"--outcome '{outcome}' is not one of {', '.join(OUTCOMES)}.")
    return outcome


def check_digest(digest: str) -> str:
    if not DIGEST.match(digest):
        raise UsageError(
            f"--digest '{digest}' is not a manifest digest: sha256: and 64 lower-case hex digits."
        )
    return digest


def parse_time(value: str, flag: str, now: datetime | None = None) -> str:
    """ISO 8601 (a date, or a time with a zone; naive times are UTC) or a span back from now,
    as the records' own time format (UTC, microseconds, Z), so string order is time order."""
    span = SPAN.match(value.strip())
    if span:
        delta = timedelta(**{SPAN_UNITS[span.group(2)]: int(span.group(1))})
        when = (now or datetime.now(UTC)) - delta
    else:
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"{flag} '{value}' is neither an ISO 8601 time (2026-12-01T09:00:00Z) nor a span "
                "back from now (7d, 12h, 30m)."
            ) from None
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def query(
    since: str | None = None,
    until: str | None = None,
    event: str | None = None,
    subject: str | None = None,
    outcome: str | None = None,
) -> Query:
    return Query(
        since=parse_time(since, "--since") if since else None,
        until=parse_time(until, "--until") if until else None,
        event=check_event(event) if event else None,
        subject=subject,
        outcome=check_outcome(outcome) if outcome else None,
    )
