"""`gkit audit`: read, verify and checkpoint the tamper-evident audit log."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

from pathlib import Path

import typer

from granite_ops_kit.cli import output
from granite_ops_kit.cli.options import JSON_OPTION
from granite_ops_kit.errors import AuditChainBroken

app = typer.Typer(
    help="Read, verify, checkpoint and export the tamper-evident audit log.", no_args_is_help=True
)
SINCE_HELP = (
    "From this time, inclusive: ISO 8601 (2026-12-01, 2026-12-01T09:00:00Z) or a span back "
    "from now (7d, 12h, 30m)."
)
UNTIL_HELP = "Up to this time, exclusive: ISO 8601 or a span back from now (7d, 12h, 30m)."
DB_OPTION = typer.Option(
    None,
    "--audit-db",
    envvar="GKIT_AUDIT_DB",
    help="sqlite:///PATH (default: in your data directory) or "
    "postgresql://... (also GKIT_AUDIT_DB).",
)


def _store(url: str | None, *, create: bool = True):
    """The store, as a context manager that closes it; reading commands pass create=False."""
    from contextlib import closing

    from granite_ops_kit.audit.store import open_store

    return closing(open_store(url, create=create))


@app.command("log")
def log(
    since: str = typer.Option(None, help=SINCE_HELP),
    until: str = typer.Option(None, help=UNTIL_HELP),
    event: str = typer.Option(None, help="Only this event, e.g. artifact.verified."),
    subject: str = typer.Option(None, help="Only records about this subject name."),
    outcome: str = typer.Option(None, help="success, failure or denied."),
    audit_db: str = DB_OPTION,
    json_: bool = JSON_OPTION,
) -> None:
    """List audit records, oldest first, with filters (checked: a typo is exit 2, never an
    empty answer). Filters read the hashed records, not the store's columns.

    Examples:

      gkit audit log --event artifact.verified --since 7d

      gkit audit log --outcome failure --since 2026-12-01T00:00:00Z
    """
    from granite_ops_kit.audit import filters

    output.use_json(json_)
    query = filters.query(since, until, event, subject, outcome)
    with _store(audit_db, create=False) as store:
        rows = list(store.records(query))

    def render(con: Console) -> None:
        from rich.table import Table

        table = Table("seq", "time (UTC)", "event", "subject", "outcome", "actor", "reason")
        for r in rows:
            style = "red" if r["outcome"] != "success" else None
            table.add_row(
                str(r["seq"]),
                r["time"],
                r["event"],
                r["subject"]["name"],
                r["outcome"],
                r["actor"],
                r["reason"],
                style=style,
            )
        con.print(table)

    output.emit({"records": rows, "count": len(rows)}, render)


@app.command("verify")
def verify(
    public_key: list[Path] = typer.Option(
        None,
        "--public-key",
        help="PEM of a trusted checkpoint signer (repeatable); pins the signers.",
    ),
    min_size: int = typer.Option(
        0,
        help="Size of the newest checkpoint you already hold: "
        "catches records removed from the end.",
    ),
    held: list[Path] = typer.Option(
        None,
        "--checkpoint",
        help="A signed checkpoint note you hold (checkpoint/note.txt of an earlier evidence "
        "export; repeatable): the log must still extend it, which catches a rewritten history.",
    ),
    audit_db: str = DB_OPTION,
    json_: bool = JSON_OPTION,
) -> None:
    """Check every record's hash and link and every checkpoint; exit 1 naming the first
    bad record.

    Examples:

      gkit audit verify --public-key signer.pem

      gkit audit verify --public-key signer.pem --checkpoint before/checkpoint/note.txt
    """
    from granite_ops_kit.audit.service import held_notes, pinned_keys, verify_store

    output.use_json(json_)
    keys, pinned_from = pinned_keys(list(public_key or []))
    notes = held_notes(list(held or []))
    with _store(audit_db, create=False) as store:
        verdict = verify_store(store, keys, min_size, held=notes)
    if not verdict.ok:
        raise AuditChainBroken(f"{store.url}: {verdict.problem}.", details=verdict.to_json())
    signatures = (
        f"signatures checked with {pinned_from}"
        if keys
        else "signatures NOT checked (no pinned key: pass --public-key)"
    )
    output.emit(
        {**verdict.to_json(), "pinned_keys": pinned_from},
        lambda con: con.print(
            f"audit log OK: {verdict.records} records, {verdict.checkpoints} checkpoints "
            f"({signatures}), head {verdict.head[:16]}…"
        ),
    )


@app.command("checkpoint")
def checkpoint_cmd(
    key: Path = typer.Option(
        None, help="Ed25519 signing key (PEM); created on first use in your data directory."
    ),
    origin: str = typer.Option(None, help="Log origin line (default gkit-audit/HOST)."),
    audit_db: str = DB_OPTION,
    json_: bool = JSON_OPTION,
) -> None:
    """Sign the RFC 6962 Merkle root of the log (C2SP signed note, Ed25519)."""
    from granite_ops_kit.audit.checkpoint import fingerprint
    from granite_ops_kit.audit.service import default_key_path, sign_checkpoint

    output.use_json(json_)
    with _store(audit_db) as store:
        record = sign_checkpoint(store, key, origin)
    d = record["details"]
    key_path, key_sha = str(key or default_key_path()), fingerprint(d["public_key"])
    output.emit(
        {"record": record, "key_path": key_path, "key_sha256": key_sha},
        lambda con: con.print(
            f"checkpoint of {d['size']} records signed as record {record['seq']}\n"
            f"signer key {key_path}, sha256 {key_sha} (verify.sh prints the same)\n{d['note']}"
        ),
    )


@app.command("export")
def export(
    output_path: Path = typer.Option(..., "--output", "-o", help="File to write."),
    fmt: str = typer.Option(
        "evidence",
        "--format",
        "-f",
        help="jsonl, csv, cyclonedx (ML-BOM of verified models), html (one "
        "self-contained page) or evidence (a zip an auditor can verify "
        "with openssl and coreutils: run verify.sh inside it).",
    ),
    since: str = typer.Option(None, help=SINCE_HELP),
    until: str = typer.Option(None, help=UNTIL_HELP),
    key: Path = typer.Option(
        None,
        help="Ed25519 audit signing key (evidence): signs a fresh checkpoint of the exported "
        "range and the export's manifest; default: the key `gkit audit checkpoint` uses.",
    ),
    origin: str = typer.Option(None, help="Log origin line (default gkit-audit/HOST)."),
    public_key: list[Path] = typer.Option(
        None,
        "--public-key",
        help="Pinned checkpoint signer (repeatable, as for audit verify): the html report's "
        "first line says whether the chain verifies against it; default: this host's key.",
    ),
    audit_db: str = DB_OPTION,
    json_: bool = JSON_OPTION,
) -> None:
    """Export records for an auditor; the export itself is recorded in the log.

    An evidence zip is covered whole by one signature: a checkpoint of the records through
    the end of the range, taken now, whose signed note also names the manifest's digest.
    `bash verify.sh [KEY_SHA256]` inside it checks everything with openssl and coreutils.
    """
    import hashlib

    from granite_ops_kit.audit import export as exporter
    from granite_ops_kit.audit import filters
    from granite_ops_kit.audit.records import Event, Subject
    from granite_ops_kit.audit.service import chain_status, pinned_keys
    from granite_ops_kit.audit.store import matches

    output.use_json(json_)
    query = filters.query(since, until)
    with _store(audit_db, create=False) as store:
        all_rows = list(store.records())
        rows = [r for r in all_rows if matches(r, query)]
        signer = _export_signer(store, key, origin) if fmt == "evidence" else None
        signing = (signer.key, signer.name) if signer else None
        pins = pinned_keys(list(public_key or [])) if fmt == "html" else None
        status = chain_status(store, *pins) if pins else None
        path = exporter.export(rows, all_rows, fmt, output_path, signing=signing, status=status)
        if signer:
            signer.signed(store, rows[-1]["seq"])
        digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        store.append(
            Event(
                "audit.exported",
                Subject(path.name, digest=digest),
                "success",
                reason=f"{fmt} export of {len(rows)} records",
                evidence={path.name: digest},
                details={"format": fmt, "since": since, "until": until},
            )
        )
    result = {"path": str(path), "format": fmt, "records": len(rows), "digest": digest}
    output.emit(
        result,
        lambda con: con.print(f"wrote {len(rows)} records as {fmt} to {path} ({digest[:23]}…)"),
    )


def _export_signer(store, key: Path | None, origin: str | None):
    """The key an evidence export is signed with, once the log passed its checks."""
    import socket

    from granite_ops_kit.audit.service import default_key_path
    from granite_ops_kit.audit.signer import Signer

    name = origin or f"gkit-audit/{socket.gethostname()}"
    return Signer.for_store(store, key or default_key_path(), name)


def approve(
    subject: str = typer.Argument(..., help="What is approved: a model name or release."),
    as_role: str = typer.Option(..., "--as", help="The approver's role, e.g. release-manager."),
    digest: str = typer.Option(None, help="The exact manifest digest approved (sha256:...)."),
    reason: str = typer.Option("", help="Why; shown to auditors."),
    key: Path = typer.Option(
        None,
        help="Your approver key (PEM, EC or Ed25519): signs the approval, so a deploy policy "
        "that requires signed approvals can tell it is yours. Without it the approval is "
        "self-declared.",
    ),
    audit_db: str = DB_OPTION,
    json_: bool = JSON_OPTION,
) -> None:
    """Record an approval of SUBJECT in a role, signed with --key or self-declared.

    A deploy guarded by segregation of duties needs an approval by someone other than the
    person who requests it; a deploy policy with `require_approval.signed` accepts only
    approvals signed by a key it lists for that role.

    Example:

      gkit approve /models/h-micro --as release-manager --digest sha256:... --key me.pem
    """
    from granite_ops_kit.audit import filters
    from granite_ops_kit.audit.approvals import approve as record_approval

    output.use_json(json_)
    if digest is not None:
        filters.check_digest(digest)
    with _store(audit_db) as store:
        record = record_approval(store, subject, as_role, digest, reason, key)
    output.emit(
        {"record": record},
        lambda con: con.print(
            f"approval of {subject} by {record['actor']} as {as_role} recorded "
            f"(record {record['seq']}, {record['details']['identity']})"
        ),
    )


@app.command("prune")
def prune(
    retention_days: int = typer.Option(
        3 * 365,
        envvar="GKIT_AUDIT_RETENTION_DAYS",
        min=180,
        help="Keep this many days (default 3 years; at least 180, the EU AI Act's six months).",
    ),
    key: Path = typer.Option(None, help="Ed25519 signing key for the summary checkpoint."),
    audit_db: str = DB_OPTION,
    json_: bool = JSON_OPTION,
) -> None:
    """Remove records older than the retention; a signed checkpoint summarises them so the
    log still verifies."""
    from granite_ops_kit.audit.service import prune as prune_log

    output.use_json(json_)
    with _store(audit_db) as store:
        summary = prune_log(store, retention_days, key)
    result = {"pruned_through": summary["last_seq"] if summary else None}
    output.emit(
        result,
        lambda con: con.print(
            f"pruned records 1..{summary['last_seq']}; their signed summary is kept"
            if summary
            else f"nothing older than {retention_days} days"
        ),
    )
