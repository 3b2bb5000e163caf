"""The audit log on both backends: chaining, filters, scrubbing, tampering, checkpoints."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import multiprocessing
import subprocess

import pytest

from granite_ops_kit.audit import checkpoint, merkle
from granite_ops_kit.audit.records import GENESIS, Event, Subject
from granite_ops_kit.audit.service import sign_checkpoint, verify_store
from granite_ops_kit.audit.store import Query, open_store
from tests.conftest import run_gkit


def _event(i: int, outcome: str = "success", event: str = "artifact.verified") -> Event:
    return Event(
        event,
        Subject(f"model-{i % 3}", "abc123", f"sha256:{i:064x}"),
        outcome,
        reason=f"step {i}",
        evidence={"model.sig": "sha256:" + "0" * 64},
    )


def _fill(url: str, n: int):
    store = open_store(url)
    for i in range(n):
        store.append(_event(i, "failure" if i % 4 == 3 else "success"))
    return store


def _sql(store, text: str, *args) -> None:
    """Tamper with the database directly, as an attacker with write access would."""
    if store.url.startswith("sqlite"):
        store.db.execute(text, args)
    else:
        with store.db.transaction():
            store.db.execute(text.replace("?", "%s"), args)


def test_records_chain_and_verify(audit_url):
    store = _fill(audit_url, 10)
    rows = list(store.records())
    assert [r["seq"] for r in rows] == list(range(1, 11))
    assert rows[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))
    assert rows[0]["controls"] == ["A.10.3", "A.6.2.4", "A.6.2.5", "A.6.2.8"]
    assert rows[0]["time"].endswith("Z") and rows[0]["schema"] == "gkit.audit/v1"
    verdict = verify_store(store)
    assert verdict.ok and verdict.records == 10 and verdict.head == rows[-1]["hash"]


def test_filters(audit_url):
    store = _fill(audit_url, 12)
    assert len(list(store.records(Query(outcome="failure")))) == 3
    assert len(list(store.records(Query(subject="model-1")))) == 4
    middle = list(store.records())[5]["time"]
    assert len(list(store.records(Query(since=middle)))) == 7
    assert len(list(store.records(Query(until=middle)))) == 5


def test_secrets_never_reach_the_log(audit_url):
    store = open_store(audit_url)
    store.append(
        Event(
            "artifact.pulled",
            Subject("m"),
            "success",
            details={"hf_token": "hf_SECRET", "nested": {"password": "p4ss"}},
        )
    )
    text = json.dumps(list(store.records()))
    assert "hf_SECRET" not in text and "p4ss" not in text and "[redacted]" in text


@pytest.mark.parametrize(
    "tamper,seq,words",
    [
        ("edit", 4, "was edited"),
        ("delete", 5, "removed, inserted or reordered"),
        ("reorder", 3, "removed, inserted or reordered"),
        ("insert", 4, "removed, inserted or reordered"),
    ],
)
def test_tampering_is_named(audit_url, tamper, seq, words):
    store = _fill(audit_url, 8)
    rows = {r["seq"]: r for r in store.records()}
    if tamper == "edit":
        forged = dict(rows[4], outcome="success" if rows[4]["outcome"] == "failure" else "failure")
        _sql(store, "UPDATE audit_records SET record = ? WHERE seq = 4", json.dumps(forged))
    elif tamper == "delete":
        _sql(store, "DELETE FROM audit_records WHERE seq = 4")
    elif tamper == "reorder":  # swap the contents of records 3 and 4
        _sql(store, "UPDATE audit_records SET record = ? WHERE seq = 3", json.dumps(rows[4]))
        _sql(store, "UPDATE audit_records SET record = ? WHERE seq = 4", json.dumps(rows[3]))
    else:  # insert a well-formed record after 3, renumbering the rest
        from granite_ops_kit.audit.records import record_hash

        fake = dict(rows[3], seq=4, reason="inserted")
        fake["hash"] = record_hash(fake)
        later = [dict(rows[s], seq=s + 1) for s in range(4, 9)]
        _sql(store, "DELETE FROM audit_records WHERE seq >= 4")
        for r in [fake, *later]:
            _sql(
                store,
                "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                r["seq"],
                r["time"],
                r["event"],
                r["subject"]["name"],
                r["outcome"],
                r["seq"] * "x",
                r["hash"] + str(r["seq"]),
                json.dumps(r),
            )
    result = run_gkit("audit", "verify", "--audit-db", audit_url)
    assert result.returncode == 1
    assert f"record {seq}" in result.stderr and words in result.stderr
    assert result.stderr.count("\n") == 1  # one sentence


def test_checkpoint_signs_the_merkle_root_and_catches_edits_and_truncation(audit_url, tmp_path):
    store = _fill(audit_url, 6)
    record = sign_checkpoint(store, tmp_path / "key.pem", "test-log")
    d = record["details"]
    leaves = [bytes.fromhex(r["hash"]) for r in list(store.records())[:6]]
    assert d["size"] == 6 and d["root"] == base64.b64encode(merkle.root(leaves)).decode()
    assert checkpoint.verify_note(d["note"], d["public_key"])
    store.append(_event(99))
    assert verify_store(store).ok
    # Editing the checkpoint's note (and re-hashing the record to hide it) is still caught.
    forged = dict(record)
    forged["details"] = dict(d, note=d["note"].replace("\n6\n", "\n5\n"))
    from granite_ops_kit.audit.records import record_hash

    forged["hash"] = record_hash(forged)
    _sql(store, "UPDATE audit_records SET record = ? WHERE seq = 7", json.dumps(forged))
    verdict = verify_store(store)
    assert not verdict.ok and verdict.bad_seq == 7
    result = run_gkit("audit", "verify", "--audit-db", audit_url)
    assert result.returncode == 1 and "record 7: checkpoint root does not match" in result.stderr
    # Records removed from the end show against the size of a checkpoint the auditor holds.
    _sql(store, "DELETE FROM audit_records WHERE seq >= 7")
    verdict = verify_store(store, min_size=8)
    assert not verdict.ok and verdict.bad_seq == 7 and "7..8 were removed" in verdict.problem


def test_checkpoint_signature_is_pinned_to_given_keys(audit_url, tmp_path):
    store = _fill(audit_url, 3)
    sign_checkpoint(store, tmp_path / "key.pem", "log-a")
    other = checkpoint.load_or_create_key(tmp_path / "other.pem")
    assert verify_store(
        store, {"log-a": checkpoint.public_pem(checkpoint.load_or_create_key(tmp_path / "key.pem"))}
    ).ok
    verdict = verify_store(store, {"log-a": checkpoint.public_pem(other)})
    assert not verdict.ok and "signature does not verify" in verdict.problem


def _recursive_mth(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return merkle.leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(_recursive_mth(leaves[:k]), _recursive_mth(leaves[k:]))


def test_merkle_root_is_rfc6962():
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(33)]
    for n in range(1, 34):
        assert merkle.root(leaves[:n]) == _recursive_mth(leaves[:n]), n


def test_an_auditor_can_verify_a_checkpoint_with_openssl(tmp_path):
    key = checkpoint.load_or_create_key(tmp_path / "k.pem")
    note = checkpoint.sign("example/log", [b"\x01" * 32, b"\x02" * 32], key, "example/log")
    body, _, sig_line = note.partition("\n\n")
    (tmp_path / "body.txt").write_text(body + "\n")
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(sig_line.split(" ")[2])[4:])
    (tmp_path / "pub.pem").write_text(checkpoint.public_pem(key))
    cmd = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(tmp_path / "pub.pem"),
        "-rawin",
        "-in",
        str(tmp_path / "body.txt"),
        "-sigfile",
        str(tmp_path / "sig.bin"),
    ]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    (tmp_path / "body.txt").write_text(body.replace("\n2\n", "\n3\n") + "\n")
    assert subprocess.run(cmd, capture_output=True, text=True).returncode != 0


def _writer(url: str, worker: int, count: int) -> None:
    store = open_store(url)
    for i in range(count):
        store.append(_event(worker * 1000 + i))
    store.close()


@pytest.mark.slow
def test_eight_concurrent_writers_keep_one_chain(audit_url):
    open_store(audit_url).close()  # create the schema once
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(audit_url, w, 500)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    assert [p.exitcode for p in procs] == [0] * 8
    store = open_store(audit_url)
    assert store.count() == 4000
    verdict = verify_store(store)
    assert verdict.ok and verdict.records == 4000


def test_fast_canonical_json_equals_rfc8785():
    import rfc8785

    from granite_ops_kit.audit.records import canonical, seal

    tricky = [
        "plain",
        "ünïcødé 東京 😀",
        'quote " backslash \\ slash /',
        "\x00\x01\x1f\x7f",
        "\b\f\n\r\t",
        "\u2028\u2029",
        "",
    ]
    for i, text in enumerate(tricky):
        record = seal(
            Event(
                "artifact.pulled",
                Subject(text, text, None),
                "success",
                reason=text,
                details={
                    "n": i,
                    "big": 2**53 - 1,
                    "huge": 2**60,
                    "neg": -7,
                    "t": True,
                    "none": None,
                    "list": [text, i],
                },
            ),
            i + 1,
            GENESIS,
        )
        body = {k: v for k, v in record.items() if k != "hash"}
        assert canonical(record) == rfc8785.dumps(body), repr(text)
        assert record["details"]["huge"] == str(2**60)
        assert record["details"]["huge"] == str(2**60)
    with_float = seal(
        Event("capacity.planned", Subject("m"), "success", details={"ratio": 0.1 + 0.2}), 1, GENESIS
    )
    assert canonical(with_float) == rfc8785.dumps(
        {k: v for k, v in with_float.items() if k != "hash"}
    )


def test_retention_prunes_old_records_and_the_log_still_verifies(audit_url, tmp_path):
    from datetime import datetime, timedelta

    from granite_ops_kit.audit.service import prune

    store = _fill(audit_url, 4)
    sign_checkpoint(store, tmp_path / "key.pem", "log")  # record 5 covers 1..4
    for i in range(5):
        store.append(_event(10 + i))
    sixth = list(store.records())[5]["time"]
    now = datetime.fromisoformat(sixth.replace("Z", "+00:00")) + timedelta(days=1095)
    summary = prune(store, 1095, tmp_path / "key.pem", now=now)
    assert summary["last_seq"] == 5
    remaining = [r["seq"] for r in store.records()]
    assert remaining == [6, 7, 8, 9, 10, 11]  # 11 is the audit.pruned record
    # A summary stands in for deleted records: it verifies only against a pinned key.
    unpinned = verify_store(store)
    assert not unpinned.ok and "which is not pinned" in unpinned.problem
    pins = {"*": checkpoint.public_pem(checkpoint.load_or_create_key(tmp_path / "key.pem"))}
    verdict = verify_store(store, pins)
    assert verdict.ok, verdict.problem
    assert verdict.records == 11 and "pruned" in verdict.notes[0]
    # A second pruning extends the signed summary.
    later = prune(store, 1095, tmp_path / "key.pem", now=now + timedelta(days=1))
    assert later["last_seq"] == 11 and len(later["leaves"]) == 11 * 64
    assert verify_store(store, pins).ok
    # Forging the summary's hashes breaks verification.
    forged = later["leaves"][:-1] + ("0" if later["leaves"][-1] != "0" else "1")
    _sql(store, "UPDATE audit_pruned SET leaves = ? WHERE last_seq = 11", forged)
    verdict = verify_store(store, pins)
    assert not verdict.ok and "summary of pruned records 1..11" in verdict.problem


def test_prune_cli_keeps_recent_records(audit_url):
    _fill(audit_url, 3).close()
    result = run_gkit("audit", "prune", "--audit-db", audit_url, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pruned_through"] is None
    too_short = run_gkit("audit", "prune", "--retention-days", "30", "--audit-db", audit_url)
    assert too_short.returncode == 2


CRASHING_WRITER = """
import sys
from granite_ops_kit.audit.records import Event, Subject
from granite_ops_kit.audit.store import open_store
store = open_store(sys.argv[1])
for i in range(100000):
    record = store.append(Event("artifact.pulled", Subject(f"m{i}"), "success"))
    print(record["seq"], flush=True)
"""


def test_a_crash_mid_write_loses_nothing_committed(audit_url):
    import signal
    import sys

    open_store(audit_url).close()
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, audit_url], stdout=subprocess.PIPE, text=True
    )
    committed = 0
    for line in child.stdout:
        committed = int(line)
        if committed >= 200:
            break
    child.send_signal(signal.SIGKILL)  # no clean-up, no rollback handler
    child.wait(30)
    store = open_store(audit_url)
    assert store.count() >= committed >= 200
    verdict = verify_store(store)
    assert verdict.ok and verdict.records == store.count()


@pytest.mark.parametrize("edit", ["subject", "digest", "trust", "signature", "key"])
def test_a_trust_attestation_binds_the_path_the_digest_and_the_inputs(tmp_path, edit):
    from granite_ops_kit.audit import attestation

    key = checkpoint.load_or_create_key(tmp_path / "host.pem")
    trust = {"public_keys": [{"fingerprint": "ab" * 32, "pem": "PEM"}], "identities": []}
    claim = attestation.attest(key, "/models/m", "sha256:" + "1" * 64, trust)
    record = {
        "subject": {"name": "/models/m", "digest": "sha256:" + "1" * 64},
        "details": {"trust": trust, "trust_attestation": claim},
    }
    pem = checkpoint.public_pem(key)
    assert attestation.attested(record, pem)
    if edit == "subject":
        record["subject"]["name"] = "/models/other"
    elif edit == "digest":
        record["subject"]["digest"] = "sha256:" + "2" * 64
    elif edit == "trust":
        record["details"]["trust"] = {**trust, "identities": ["attacker@example.com"]}
    elif edit == "signature":
        claim["signature"] = "not base64!"
    else:
        pem = checkpoint.public_pem(checkpoint.load_or_create_key(tmp_path / "other.pem"))
    assert not attestation.attested(record, pem)
