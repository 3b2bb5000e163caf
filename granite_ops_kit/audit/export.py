"""Exports for an auditor: jsonl, csv, a self-contained HTML report, and an evidence zip.

The evidence zip is built so that it can be checked with OpenSSL and coreutils alone
(`verify.sh` inside it, docs/audit.md): every record's canonical bytes as a file, their
SHA-256 list, the chain as a table, the newest checkpoint's body, signature and public key,
the Merkle leaves, and a manifest of the digests of everything.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import os
import tempfile
import zipfile
from collections import Counter
from importlib import resources
from pathlib import Path

from granite_ops_kit.audit import attestation, mlbom
from granite_ops_kit.audit import records as rec
from granite_ops_kit.errors import UsageError

FORMATS = ("jsonl", "csv", "html", "cyclonedx", "evidence")
CSV_COLUMNS = [
    "seq",
    "time",
    "event",
    "subject",
    "revision",
    "digest",
    "outcome",
    "reason",
    "actor",
    "host",
    "tool_version",
    "policy_id",
    "controls",
    "hash",
    "prev_hash",
]


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: never a partial export."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_jsonl(rows: list[dict]) -> bytes:
    return b"".join(
        json.dumps(r, sort_keys=True, ensure_ascii=False).encode() + b"\n" for r in rows
    )


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value):
    """A CSV cell a spreadsheet shows as text: a field starting like a formula (a reason
    reading '=HYPERLINK(...)', written into the store by anyone) gets a leading quote, as
    OWASP advises against CSV injection."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def to_csv(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        s = r["subject"]
        writer.writerow(
            map(
                _cell,
                [
                    r["seq"],
                    r["time"],
                    r["event"],
                    s["name"],
                    s.get("revision") or "",
                    s.get("digest") or "",
                    r["outcome"],
                    r["reason"],
                    r["actor"],
                    r["host"],
                    r["tool_version"],
                    r.get("policy_id") or "",
                    " ".join(r["controls"]),
                    r["hash"],
                    r["prev_hash"],
                ],
            )
        )
    return buffer.getvalue().encode()


def control_order(control: str) -> tuple:
    """Clauses (5.3, 10.2) before Annex A (A.2.2 .. A.10.4), each in numeric order."""
    annex = control.startswith("A.")
    parts = control.removeprefix("A.").split(".")
    return (annex, [int(p) if p.isdigit() else 0 for p in parts], control)


def _control_titles() -> dict[str, str]:
    from granite_ops_kit.policy.engine import policies_dir

    return json.loads((policies_dir() / "iso42001-titles.json").read_text("utf-8"))["titles"]


def _status_html(status: dict | None) -> str:
    if not status:
        return ""
    css = "ok" if status.get("ok") else "bad"
    return f'<p class="status {css}">{html.escape(status["text"])}</p>'


def _attestation_note(r: dict, key_pem: str | None) -> str:
    """After a verification's reason: whether `key_pem` signed its trust inputs (a record
    appended to the store by hand is not)."""
    if key_pem is None or r["event"] != mlbom.VERIFIED or r["outcome"] != "success":
        return ""
    if attestation.attested(r, key_pem):
        return " (trust inputs attested by this host's audit key)"
    return " (trust inputs NOT attested by this host's audit key)"


def to_html(
    rows: list[dict], title: str, status: dict | None = None, key_pem: str | None = None
) -> bytes:
    """One self-contained page for people: the chain's status first, controls by title;
    with `key_pem`, each verification says whether that key attested it."""
    template = resources.files("granite_ops_kit.audit").joinpath("report.html").read_text()
    events = Counter(r["event"] for r in rows)
    controls = Counter(c for r in rows for c in r["controls"])
    titles = _control_titles()
    failures = sum(r["outcome"] != "success" for r in rows)
    esc = html.escape
    event_rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in sorted(events.items())
    )
    control_rows = "".join(
        f"<tr><td>{esc(c)}</td><td>{esc(titles.get(c, ''))}</td><td>{controls[c]}</td></tr>"
        for c in sorted(controls, key=control_order)
    )
    record_rows = "".join(
        f'<tr id="r{r["seq"]}" class="{"fail" if r["outcome"] != "success" else ""}">'
        f'<td><a href="#r{r["seq"]}">{r["seq"]}</a></td><td>{esc(r["time"])}</td>'
        f"<td>{esc(r['event'])}</td><td>{esc(r['subject']['name'])}</td>"
        f"<td><code>{esc(r['subject'].get('digest') or '')}</code></td>"
        f"<td>{esc(r['outcome'])}</td><td>{esc(r['actor'])}@{esc(r['host'])}</td>"
        f"<td>{esc(r['reason'] + _attestation_note(r, key_pem))}</td>"
        f"<td>{esc(' '.join(r['controls']))}</td>"
        f"<td><code>{esc(r['hash'][:16])}</code></td></tr>"
        for r in rows
    )
    page = (
        template.replace("{{title}}", esc(title))
        .replace(
            "{{summary}}",
            f"{len(rows)} records, {failures} not successful, "
            f"seq {rows[0]['seq'] if rows else '-'}.."
            f"{rows[-1]['seq'] if rows else '-'}",
        )
        .replace("{{status}}", _status_html(status))
        .replace("{{events}}", event_rows)
        .replace("{{controls}}", control_rows)
        .replace("{{records}}", record_rows)
    )
    return page.encode()


def _signed_export_files(
    files: dict[str, bytes], all_rows: list[dict], size: int, key, origin: str
) -> dict[str, bytes]:
    """A checkpoint of records 1..size, taken now, whose note also signs the manifest's
    digest: with it, every byte of the export is covered by one signature."""
    from granite_ops_kit.audit import checkpoint

    leaves = [bytes.fromhex(r["hash"]) for r in all_rows[:size]]
    manifest = hashlib.sha256(files["manifest.sha256"]).hexdigest()
    note = checkpoint.sign(origin, leaves, key, origin, (f"manifest.sha256 {manifest}",))
    body, _, sig_line = note.partition("\n\n")
    return {
        "checkpoint/note.txt": note.encode(),
        "checkpoint/body.txt": (body + "\n").encode(),
        "checkpoint/signature.bin": base64.b64decode(sig_line.split(" ")[2])[4:],
    }


def to_evidence(rows: list[dict], all_rows: list[dict], key, origin: str) -> bytes:
    """The zip: records, their hashes and chain, the leaves and public key (all listed in
    manifest.sha256), and a fresh signed checkpoint covering the records and the manifest."""
    from granite_ops_kit.audit import checkpoint

    if not rows:
        raise UsageError("no records in the exported range; an empty export proves nothing.")
    size = rows[-1]["seq"]
    if [r["seq"] for r in all_rows[:size]] != list(range(1, size + 1)):
        raise UsageError(
            "the log's first records were pruned; an evidence export needs records 1..N "
            "(export before pruning, or keep the pruned summary's export)."
        )
    files: dict[str, bytes] = {}
    for r in rows:
        files[f"records/{r['seq']:08d}.json"] = rec.canonical(r)
    files["hashes.sha256"] = "".join(
        f"{r['hash']}  records/{r['seq']:08d}.json\n" for r in rows
    ).encode()
    files["chain.tsv"] = "".join(
        f"{r['seq']}\t{r['prev_hash']}\t{r['hash']}\n" for r in rows
    ).encode()
    files["records.jsonl"] = to_jsonl(rows)
    files["ml-bom.cdx.json"] = mlbom.ml_bom(rows, checkpoint.public_pem(key)).encode()
    files["checkpoint/leaves.bin"] = b"".join(bytes.fromhex(r["hash"]) for r in all_rows[:size])
    files["checkpoint/public-key.pem"] = checkpoint.public_pem(key).encode()
    files["verify.sh"] = (
        resources.files("granite_ops_kit.audit").joinpath("verify_evidence.sh").read_bytes()
    )
    files["manifest.sha256"] = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
    ).encode()
    files.update(_signed_export_files(files, all_rows, size, key, origin))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if name.endswith(".sh") else 0o644) << 16
            z.writestr(info, data)
    return buffer.getvalue()


def _required(signing: tuple | None) -> tuple:
    if signing is None:
        raise UsageError("an evidence export needs the audit signing key (--key).")
    return signing


def export(
    rows: list[dict],
    all_rows: list[dict],
    fmt: str,
    output: Path,
    title: str = "gkit audit report",
    signing: tuple | None = None,  # (Ed25519 key, origin): evidence exports only
    status: dict | None = None,  # {"ok", "text"}: the chain's verdict, for the html report
) -> Path:
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    data = {
        "jsonl": lambda: to_jsonl(rows),
        "csv": lambda: to_csv(rows),
        "html": lambda: to_html(rows, title, status, attestation.host_public_key()[0]),
        "cyclonedx": lambda: mlbom.ml_bom(rows, attestation.host_public_key()[0]).encode(),
        "evidence": lambda: to_evidence(rows, all_rows, *_required(signing)),
    }[fmt]()
    _atomic_write(output, data)
    return output
