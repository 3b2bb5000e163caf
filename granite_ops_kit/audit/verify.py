"""Check an audit log: every record's hash, every link, every checkpoint's root and signature.

The first problem found is named by record number, with what it means (edited, removed,
inserted or reordered), so an auditor knows where to look.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field

from granite_ops_kit.audit import checkpoint, merkle, records
from granite_ops_kit.audit.records import GENESIS
from granite_ops_kit.audit.store import AuditStore, column_problem

CHECKPOINT_EVENT = "audit.checkpointed"


ANY_NAME = "*"  # a pinned key given without a name: trusted for every checkpoint name


def pinned_key(name: str, public_keys: dict[str, str]) -> str | None:
    """The pinned PEM for a checkpoint key name; never a key the log carries itself."""
    return public_keys.get(name) or public_keys.get(ANY_NAME)


def _unpinned(what: str, name: str, public_keys: dict) -> str:
    names = ", ".join(sorted(n for n in public_keys if n != ANY_NAME)) or "(none)"
    return f"{what} is signed under key name '{name}', which is not pinned (pinned names: {names})"


@dataclass
class Verdict:
    ok: bool
    records: int = 0
    checkpoints: int = 0
    unchecked_signatures: int = 0  # checkpoints whose signature no pinned key could check
    head: str = GENESIS
    problem: str | None = None
    bad_seq: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return self.__dict__.copy()


def _check_record(record: dict, expected_seq: int, prev: str) -> str | None:
    seq = record.get("seq")
    if records.record_hash(record) != record.get("hash"):
        return f"record {seq}: its contents do not match its hash (the record was edited)"
    if seq != expected_seq:
        return (
            f"record {seq}: expected record {expected_seq} here (a record was removed, "
            "inserted or reordered)"
        )
    if record.get("prev_hash") != prev:
        return (
            f"record {seq}: prev_hash does not match record {expected_seq - 1}'s hash "
            "(a record was removed, inserted or reordered before it)"
        )
    return None


def _size_and_note(record: dict) -> tuple[int | None, str]:
    """A checkpoint record's tree size and signed note, None and "" where they are not a
    whole number and text (a record rewritten with its hash recomputed can hold anything)."""
    details = record.get("details")
    details = details if isinstance(details, dict) else {}
    size, note = details.get("size"), details.get("note")
    size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
    return size, note if isinstance(note, str) else ""


def _signature(what: str, note: str, name: str, public_keys: dict, others_ok: bool):
    """(problem, checked) for a signed note under key `name`. With `others_ok`, a note that
    the key pinned for its name did not sign (no key pinned, or another key id: another
    host's signer) is left unchecked; without it, an unpinned name is a problem."""
    key = pinned_key(name, public_keys)
    if key is None or (others_ok and not checkpoint.signed_by(note, key)):
        return (None if others_ok else _unpinned(what, name, public_keys)), False
    if not checkpoint.verify_note(note, key):
        return f"{what}'s signature does not verify with the key pinned for '{name}'", True
    return None, True


def _check_checkpoint(
    record: dict, leaves: list[bytes], public_keys: dict, others_ok: bool = False
) -> tuple[str | None, bool]:
    """(problem, whether its signature was checked)."""
    size, note = _size_and_note(record)
    if size is None or size > len(leaves):
        return f"record {record['seq']}: checkpoint covers {size} records, the log has fewer", False
    expected = base64.b64encode(merkle.root(leaves[:size])).decode()
    parsed = checkpoint.parse_note(note)
    if parsed is None or parsed.size != size or parsed.root_b64 != expected:
        return (
            f"record {record['seq']}: checkpoint root does not match records 1..{size} "
            "(a record covered by the checkpoint was changed, or the checkpoint was)"
        ), False
    if not public_keys:
        return None, False
    what = f"record {record['seq']}: the checkpoint"
    return _signature(what, note, parsed.key_name, public_keys, others_ok)


def _check_anchor(anchor: dict, public_keys: dict, others_ok: bool = False) -> str | None:
    """The signed summary of pruned records: its leaves must give the signed root, and it
    is never taken on trust (it stands in for deleted records) but by `others_ok`."""
    hexes = anchor["leaves"]
    leaves = [bytes.fromhex(hexes[i : i + 64]) for i in range(0, len(hexes), 64)]
    note = checkpoint.parse_note(anchor["note"])
    expected = base64.b64encode(merkle.root(leaves)).decode()
    what = f"the summary of pruned records 1..{anchor['last_seq']}"
    if (
        note is None
        or note.size != anchor["last_seq"]
        or len(leaves) != note.size
        or note.root_b64 != expected
    ):
        return f"{what} does not match its signed checkpoint"
    return _signature(what, anchor["note"], note.key_name, public_keys, others_ok)[0]


def verify(
    log: Iterable[dict],
    public_keys: dict[str, str] | None = None,
    min_size: int = 0,
    anchor: dict | None = None,
    others_ok: bool = False,
) -> Verdict:
    """Walk the log in order. `public_keys` (key name -> PEM, "*" for any name) pins the
    checkpoint signers: a checkpoint verifies only against a pinned key, and with no pins its
    signature is left unchecked and counted (never checked against the key it carries);
    `min_size` is the tree size of the newest checkpoint the auditor already holds, which
    catches records removed from the end of the log; `anchor` is the signed summary of
    records removed by retention, from which the remaining chain continues; `others_ok`
    leaves notes the pinned keys did not sign (other hosts' checkpoints and summaries)
    unchecked, counted, instead of failing, as a signer checking only what it signed itself
    does (audit/signer.py)."""
    public_keys = public_keys or {}
    verdict, leaves, prev, start = Verdict(ok=True), [], GENESIS, 1
    if anchor:
        problem = _check_anchor(anchor, public_keys, others_ok)
        if problem:
            return Verdict(ok=False, problem=problem, bad_seq=anchor["last_seq"])
        hexes = anchor["leaves"]
        leaves = [bytes.fromhex(hexes[i : i + 64]) for i in range(0, len(hexes), 64)]
        prev, start = leaves[-1].hex(), anchor["last_seq"] + 1
        verdict.notes.append(f"records 1..{anchor['last_seq']} pruned; signed summary OK")
    verdict.records = start - 1
    for expected, record in enumerate(log, start=start):
        problem = _check_record(record, expected, prev)
        if problem is None and record.get("event") == CHECKPOINT_EVENT:
            problem, checked = _check_checkpoint(record, leaves, public_keys, others_ok)
            verdict.checkpoints += 1
            verdict.unchecked_signatures += not checked
        if problem:
            verdict.ok, verdict.problem, verdict.bad_seq = False, problem, record.get("seq")
            return verdict
        leaves.append(bytes.fromhex(record["hash"]))
        prev = record["hash"]
        verdict.records = expected
    verdict.head = prev
    if verdict.records < min_size:
        verdict.ok = False
        verdict.problem = (
            f"the log has {verdict.records} records but a checkpoint covered "
            f"{min_size}: records {verdict.records + 1}..{min_size} were removed"
        )
        verdict.bad_seq = verdict.records + 1
    return verdict


def log_leaves(store: AuditStore) -> list[bytes]:
    """The Merkle leaves of the whole log: the pruned records' (from the signed summary),
    then every record's hash."""
    anchor = store.anchor()
    hexes = (anchor["leaves"] if anchor else "") + "".join(r["hash"] for r in store.records())
    return [bytes.fromhex(hexes[i : i + 64]) for i in range(0, len(hexes), 64)]


def held_problem(leaves: list[bytes], note: str, public_keys: dict) -> str | None:
    """Why the log does not extend a checkpoint the auditor holds (a note from an earlier
    export or record), or None. A rewriter can drop the checkpoints inside the log; not the
    one kept outside it. Its signature is checked where a key is pinned."""
    parsed = checkpoint.parse_note(note)
    if parsed is None:
        return "the checkpoint you hold is not a signed note"
    what = f"the checkpoint you hold (records 1..{parsed.size}, key name '{parsed.key_name}')"
    if public_keys:
        problem, _ = _signature(what, note, parsed.key_name, public_keys, False)
        if problem:
            return problem
    if parsed.size > len(leaves):
        return f"the log has {len(leaves)} records, fewer than {what} covers: records were removed"
    if base64.b64encode(merkle.root(leaves[: parsed.size])).decode() != parsed.root_b64:
        return f"records 1..{parsed.size} no longer give the root of {what}: they were rewritten"
    return None


def verify_store(
    store: AuditStore,
    public_keys: dict[str, str] | None = None,
    min_size: int = 0,
    others_ok: bool = False,
    held: tuple[str, ...] = (),
) -> Verdict:
    """The chain and checkpoints, every indexed column against its hashed record, and that
    the log extends each checkpoint note in `held` (held_problem)."""
    rows = list(store.rows())
    verdict = verify([r for _, r in rows], public_keys, min_size, store.anchor(), others_ok)
    if not verdict.ok:
        return verdict  # the chain names what happened (edited, removed, reordered)
    for columns, record in rows:
        problem = column_problem(columns, record)
        if problem:
            return Verdict(ok=False, problem=problem, bad_seq=columns[0])
    leaves = log_leaves(store) if held else []
    for note in held:
        problem = held_problem(leaves, note, public_keys or {})
        if problem:
            return Verdict(ok=False, problem=problem, records=verdict.records)
    return verdict
