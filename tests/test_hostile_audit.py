"""Attacks on the audit log by someone who can write the store but holds no checkpoint key.

Each runs the real `gkit audit verify` (or the deploy gate) on SQLite and PostgreSQL and must
end in exit 1 naming the record; every mistyped filter must end in exit 2, never an answer.
"""

from __future__ import annotations

import json
import shutil

import pytest
from cryptography.hazmat.primitives import serialization

from granite_ops_kit.audit import checkpoint
from granite_ops_kit.audit.service import sign_checkpoint
from granite_ops_kit.audit.store import open_store
from tests.conftest import run_gkit
from tests.test_audit import _event, _fill, _sql


def _pin(tmp_path, key_path, name: str | None) -> str:
    """The honest signer's public key as an auditor holds it, named or for any name."""
    pem = checkpoint.public_pem(checkpoint.load_or_create_key(key_path))
    path = tmp_path / f"pin-{(name or 'any').replace('/', '-')}.pem"
    path.write_text((f"# {name}\n" if name else "") + pem)
    return str(path)


def _verify(url: str, *pins: str):
    """audit verify pinning each PEM path given; other arguments pass through as they are."""
    args = [a for pin in pins for a in (("--public-key", pin) if pin.endswith(".pem") else (pin,))]
    return run_gkit("audit", "verify", "--audit-db", url, *args, "--json")


def _message(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    return json.loads(result.stdout)["error"]["message"]


@pytest.fixture
def honest(audit_url, tmp_path):
    """Six records and a checkpoint signed by the honest key under 'gkit-audit/honest'."""
    store = _fill(audit_url, 6)
    sign_checkpoint(store, tmp_path / "honest.pem", "gkit-audit/honest")
    store.append(_event(7))
    return store


def test_the_honest_log_verifies_with_its_pinned_key(honest, audit_url, tmp_path):
    for name in ("gkit-audit/honest", None):
        result = _verify(audit_url, _pin(tmp_path, tmp_path / "honest.pem", name))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["unchecked_signatures"] == 0


def test_a_rewritten_log_with_a_checkpoint_under_an_unpinned_name_fails(
    audit_url, tmp_path, honest
):
    honest.close()
    # The attacker rewrites the whole log (an edited record, every hash recomputed) and
    # signs a checkpoint with a key of their own, carried in the record, under 'evil'.
    _sql(open_store(audit_url), "DELETE FROM audit_records")
    forged = open_store(audit_url)
    for i in range(6):
        forged.append(_event(i, "success"))
    sign_checkpoint(forged, tmp_path / "evil.pem", "evil")
    forged.close()
    named = _pin(tmp_path, tmp_path / "honest.pem", "gkit-audit/honest")
    message = _message(_verify(audit_url, named))
    assert "record 7" in message and "key name 'evil', which is not pinned" in message
    unnamed = _pin(tmp_path, tmp_path / "honest.pem", None)
    message = _message(_verify(audit_url, unnamed))
    assert "record 7" in message and "does not verify with the key pinned for 'evil'" in message


def test_a_forged_pruning_summary_fails(honest, audit_url, tmp_path):
    evil = checkpoint.load_or_create_key(tmp_path / "evil.pem")
    leaves = [bytes.fromhex("11" * 32)] * 3
    note = checkpoint.sign("gkit-audit/honest", leaves, evil, "gkit-audit/honest")
    _sql(
        honest,
        "INSERT INTO audit_pruned VALUES (?, ?, ?, ?)",
        3,
        "11" * 32 * 3,
        note,
        checkpoint.public_pem(evil),
    )
    message = _message(_verify(audit_url, _pin(tmp_path, tmp_path / "honest.pem", None)))
    assert "summary of pruned records 1..3" in message and "does not verify" in message


@pytest.mark.parametrize(
    ("column", "value"),
    [("event", "artifact.signed"), ("subject", "someone-else"), ("outcome", "failure")],
)
def test_an_edited_column_fails_verify_naming_the_record(
    honest, audit_url, tmp_path, column, value
):
    _sql(honest, f"UPDATE audit_records SET {column} = ? WHERE seq = 3", value)
    message = _message(_verify(audit_url, _pin(tmp_path, tmp_path / "honest.pem", None)))
    assert f"record 3: its '{column}' column says '{value}'" in message


def _with_field(text: str, field: str) -> str:
    """The stored record with one more top-level field, written as raw JSON text."""
    return "{" + field + ", " + text[1:]


# What an attacker can put in a record's JSON column (TEXT on both backends), and what
# `gkit` must then say about record 3 instead of a traceback.
HOSTILE_RECORDS = {
    "not JSON": (lambda t: "{not json", "it is not valid JSON"),
    "a list": (lambda t: "[1, 2]", "it is not a JSON object"),
    "100,000 deep": (lambda t: "[" * 100_000 + "]" * 100_000, "nested deeper than 32 levels"),
    "NaN": (lambda t: _with_field(t, '"x": NaN'), "a number that is not finite"),
    "1e999": (lambda t: _with_field(t, '"x": 1e999'), "a number that is not finite"),
    "5,000 digits": (lambda t: _with_field(t, '"x": ' + "9" * 5000), "a number too long"),
    "hash a number": (lambda t: t.replace('"hash": "', '"hash": 5, "was": "'), "'hash' is"),
    "no subject": (lambda t: t.replace('"subject": {', '"object": {'), "subject has no name"),
}


@pytest.mark.parametrize("command", [["verify"], ["log"], ["export", "--output", "e.zip"]])
@pytest.mark.parametrize("attack", list(HOSTILE_RECORDS))
def test_a_record_that_gkit_did_not_write_is_one_sentence(honest, audit_url, attack, command):
    edit, says = HOSTILE_RECORDS[attack]
    text = next(r for _, r in honest.rows() if r["seq"] == 3)
    _sql(honest, "UPDATE audit_records SET record = ? WHERE seq = 3", edit(json.dumps(text)))
    result = run_gkit("audit", *command, "--audit-db", audit_url)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "record 3 is not what gkit writes" in result.stderr and says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("leaves", "says"),
    [
        ("zz" * 96, "its leaves are not one SHA-256 hex digest per record"),
        ("11" * 32 * 2 + "1" * 63, "its leaves are not one SHA-256 hex digest per record"),
        ("11" * 32 * 2, "its leaves are not one SHA-256 hex digest per record"),  # 2 for 3
    ],
    ids=["not-hex", "a-digit-short", "a-leaf-short"],
)
def test_a_malformed_pruning_summary_is_one_sentence(honest, audit_url, leaves, says):
    _sql(honest, "INSERT INTO audit_pruned VALUES (?, ?, ?, ?)", 3, leaves, "note", "key")
    result = run_gkit("audit", "verify", "--audit-db", audit_url)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "the summary of pruned records 1..3 is not what gkit writes" in result.stderr
    assert says in result.stderr


def test_audit_log_filters_read_the_record_not_the_column(honest, audit_url):
    _sql(honest, "UPDATE audit_records SET outcome = 'success' WHERE seq = 4")  # was failure
    result = run_gkit("audit", "log", "--outcome", "failure", "--audit-db", audit_url, "--json")
    assert result.returncode == 0, result.stderr
    assert [r["seq"] for r in json.loads(result.stdout)["records"]] == [4]


def test_the_gate_refuses_a_verification_that_is_only_an_edited_column(
    audit_url, tmp_path, tiny_hybrid
):
    model = tmp_path / "m"
    shutil.copytree(tiny_hybrid, model)
    key = tmp_path / "k.pem"
    from tests import pki

    k = pki.new_key()
    pki.write_key(k, key)
    pub = pki.write_public(k, tmp_path / "k.pub")
    env = {"GKIT_AUDIT_DB": audit_url}
    assert run_gkit("sign", str(model), "--key", str(key), env=env).returncode == 0
    store = open_store(audit_url)
    _sql(store, "UPDATE audit_records SET event = 'artifact.verified' WHERE seq = 1")
    out = tmp_path / "out"
    for extra in ([], ["--public-key", str(pub)]):
        r = run_gkit("deploy", str(model), "--gpus", "1", "--output", str(out), *extra, env=env)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "no passing 'gkit verify'" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["log", "--outcome", "failed"], "--outcome 'failed' is not one of success, failure"),
        (["log", "--event", "artifact.verifed"], "is not an audit event; events: "),
        (["log", "--since", "yesterday"], "--since 'yesterday' is neither an ISO 8601"),
        (["log", "--until", "5 days"], "--until '5 days' is neither"),
        (["export", "--output", "x.zip", "--since", "1w"], "--since '1w' is neither"),
    ],
)
def test_each_invalid_filter_exits_2(audit_url, tmp_path, args, words):
    _fill(audit_url, 2).close()
    result = run_gkit("audit", *args, "--audit-db", audit_url, cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert not (tmp_path / "x.zip").exists()


def test_relative_and_iso_times_select_by_the_records_time(audit_url):
    _fill(audit_url, 3).close()
    for since, count in (("7d", 3), ("2999-01-01", 0), ("2000-01-01T00:00:00+02:00", 3)):
        result = run_gkit("audit", "log", "--since", since, "--audit-db", audit_url, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["count"] == count


def test_a_bad_approval_digest_exits_2(audit_url):
    result = run_gkit(
        "approve",
        "m",
        "--as",
        "release-manager",
        "--digest",
        "sha256:bogus",
        "--audit-db",
        audit_url,
    )
    assert result.returncode == 2 and "is not a manifest digest" in result.stderr


@pytest.mark.parametrize("command", [["verify"], ["log"], ["export", "--output", "e.zip"]])
def test_reading_a_store_that_does_not_exist_exits_2_and_creates_nothing(tmp_path, command):
    missing = tmp_path / "typo" / "audit.db"
    result = run_gkit("audit", *command, "--audit-db", f"sqlite:///{missing}", cwd=tmp_path)
    assert result.returncode == 2 and f"audit store {missing} does not exist" in result.stderr
    assert not missing.parent.exists() and not (tmp_path / "e.zip").exists()


def test_a_corrupt_store_is_one_sentence(tmp_path):
    bad = tmp_path / "audit.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    result = run_gkit("audit", "verify", "--audit-db", f"sqlite:///{bad}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"audit store {bad} cannot be opened" in result.stderr


def test_checkpoint_prints_the_fingerprint_verify_sh_prints(tmp_path, audit_url):
    _fill(audit_url, 2).close()
    key = tmp_path / "k.pem"
    result = run_gkit("audit", "checkpoint", "--key", str(key), "--audit-db", audit_url, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    pem = checkpoint.public_pem(checkpoint.load_key(key))
    assert out["key_path"] == str(key) and out["key_sha256"] == checkpoint.fingerprint(pem)


def test_events_listed_by_filters_are_the_mapped_events():
    from granite_ops_kit.audit import filters

    known = filters.events()
    for event in ("artifact.verified", "deployment.rendered", "runtime.started", "runtime.stopped"):
        assert event in known  # every event gkit writes can be asked for
    assert "artifact.verifed" not in known


# --- signed approvals -------------------------------------------------------------------


def _deploy_policy(tmp_path, approver_pub) -> str:
    from granite_ops_kit.audit.approval_statement import fingerprint

    key = serialization.load_pem_public_key(approver_pub.read_bytes())
    policy = {
        "id": "deploy-signed",
        "require_verification": True,
        "require_approval": {
            "enabled": True,
            "role": "release-manager",
            "by_someone_other_than_the_requester": True,
            "for_the_exact_digest": True,
            "signed": True,
            "approvers": [
                {
                    "name": "alice@example.com",
                    "roles": ["release-manager"],
                    "key_sha256": fingerprint(key),
                },
            ],
        },
    }
    path = tmp_path / "deploy-signed.json"
    path.write_text(json.dumps(policy))
    return str(path)


def test_a_signed_approval_policy_refuses_self_declared_and_accepts_a_listed_signer(
    tmp_path, tiny_hybrid
):
    from tests import pki

    db = f"sqlite:///{tmp_path / 'audit.db'}"
    model = tmp_path / "m"
    shutil.copytree(tiny_hybrid, model)
    signer, alice, mallory = pki.new_key(), pki.new_key(), pki.new_key()
    pki.write_key(signer, tmp_path / "signer.pem")
    pub = pki.write_public(signer, tmp_path / "signer.pub")
    pki.write_key(alice, tmp_path / "alice.pem")
    pki.write_key(mallory, tmp_path / "mallory.pem")
    alice_pub = pki.write_public(alice, tmp_path / "alice.pub")
    bob = {"GKIT_AUDIT_DB": db, "GKIT_ACTOR": "bob@example.com"}
    assert (
        run_gkit("sign", str(model), "--key", str(tmp_path / "signer.pem"), env=bob).returncode == 0
    )
    verified = run_gkit("verify", str(model), "--public-key", str(pub), "--json", env=bob)
    digest = json.loads(verified.stdout)["manifest_digest"]
    policy = _deploy_policy(tmp_path, alice_pub)
    deploy = [
        "deploy",
        str(model),
        "--gpus",
        "1",
        "--output",
        str(tmp_path / "o"),
        "--deploy-policy",
        policy,
        "--json",
    ]

    def approve(actor: str, *key: str):
        env = {**bob, "GKIT_ACTOR": actor}
        r = run_gkit(
            "approve",
            str(model.resolve()),
            "--as",
            "release-manager",
            "--digest",
            digest,
            *key,
            env=env,
        )
        assert r.returncode == 0, r.stderr

    approve("alice@example.com")  # self-declared: claims to be alice
    r = run_gkit(*deploy, env=bob)
    assert r.returncode == 1 and "self-declared" in json.loads(r.stdout)["error"]["message"]
    approve("alice@example.com", "--key", str(tmp_path / "mallory.pem"))  # an unlisted key
    r = run_gkit(*deploy, env=bob)
    assert r.returncode == 1 and "does not list" in json.loads(r.stdout)["error"]["message"]
    approve("anyone", "--key", str(tmp_path / "alice.pem"))  # alice's own key
    r = run_gkit(*deploy, env=bob)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "approved by alice@example.com as release-manager" in json.loads(r.stdout)["approval"]
    # alice cannot approve her own deploy, whatever name she acts under
    r = run_gkit(*deploy, env={**bob, "GKIT_ACTOR": "alice@example.com"})
    assert r.returncode == 1 and "who requests the deploy" in r.stdout


def test_an_edited_signed_approval_does_not_count(audit_url, tmp_path):
    from granite_ops_kit.audit.approval_statement import Approver, check, fingerprint
    from granite_ops_kit.audit.approvals import approve
    from tests import pki

    key = pki.new_key()
    pki.write_key(key, tmp_path / "a.pem")
    store = open_store(audit_url)
    record = approve(store, "m", "release-manager", "sha256:" + "0" * 64, key=tmp_path / "a.pem")
    listed = [Approver("alice", ("release-manager",), fingerprint(key.public_key()))]
    assert check(record, listed).approver.name == "alice"
    record["details"]["signed"]["statement"] = record["details"]["signed"]["statement"].replace(
        "release-manager", "ciso"
    )
    assert check(record, listed) == "its signature by alice does not verify"


# --- every step leaves its record, or does not act -------------------------------------


def _events(db) -> list[dict]:
    store = open_store(f"sqlite:///{db}")
    try:
        return list(store.records())
    finally:
        store.close()


def test_size_records_the_capacity_plan(_private_audit_log):
    result = run_gkit("size", "granite-4.0-h-micro", "--gpu", "h100-80gb", "--context", "8192")
    assert result.returncode == 0, result.stderr
    (plan,) = [r for r in _events(_private_audit_log) if r["event"] == "capacity.planned"]
    assert plan["outcome"] == "success" and plan["details"]["context"] == 8192
    assert "A.4.5" in plan["controls"] and plan["details"]["gpu"] == "h100-80gb"


def test_serve_records_its_start_and_stop(tiny_hybrid, _private_audit_log):
    from tests.server_process import ServerProcess

    server = ServerProcess(tiny_hybrid)
    started = [r["event"] for r in _events(_private_audit_log)]
    assert server.stop() in (0, 143)  # 128 + SIGTERM, after the graceful shutdown
    events = [r["event"] for r in _events(_private_audit_log)]
    assert "runtime.started" in started and "runtime.stopped" not in started
    assert events[-2:] == ["runtime.started", "runtime.stopped"]


@pytest.fixture
def locked_store(_private_audit_log):
    import sqlite3

    open_store(f"sqlite:///{_private_audit_log}").close()
    holder = sqlite3.connect(_private_audit_log, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    yield _private_audit_log
    holder.execute("ROLLBACK")
    holder.close()


def test_a_locked_store_stops_a_deploy_before_it_acts(locked_store, tiny_hybrid, tmp_path):
    out = tmp_path / "out"
    r = run_gkit(
        "deploy",
        str(tiny_hybrid),
        "--gpus",
        "1",
        "--output",
        str(out),
        env={"GKIT_AUDIT_LOCK_TIMEOUT": "1"},
    )
    assert r.returncode == 1 and "is locked by another writer (waited 1 s" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_a_locked_store_stops_serve_before_it_loads(locked_store, tiny_hybrid):
    r = run_gkit("serve", str(tiny_hybrid), "--port", "1", env={"GKIT_AUDIT_LOCK_TIMEOUT": "1"})
    assert r.returncode == 1 and "is locked by another writer" in r.stderr
    assert "serving" not in r.stderr


def _rewrite_history(audit_url: str) -> None:
    """What an attacker without the key can do: delete every record (checkpoints included)
    and write a history of their own, each hash recomputed, so the chain itself is sound."""
    store = open_store(audit_url)
    _sql(store, "DELETE FROM audit_records")
    for i in range(8):
        store.append(_event(i, "success"))  # the failures are gone
    store.close()


def _count(audit_url: str) -> int:
    store = open_store(audit_url)
    try:
        return store.count()
    finally:
        store.close()


@pytest.mark.parametrize("command", [["checkpoint"], ["export", "--output", "e.zip"]])
def test_a_rewritten_history_is_never_signed(honest, audit_url, tmp_path, command):
    """The honest key signed records 1..6; a rewritten log that no longer extends that
    tree gets no signature from it: not a checkpoint, not an evidence export."""
    honest.close()
    _rewrite_history(audit_url)
    before = _count(audit_url)
    key = ["--key", str(tmp_path / "honest.pem")]
    result = run_gkit("audit", *command, *key, "--audit-db", audit_url, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no longer extends the tree of 6 records" in result.stderr
    assert "nothing was signed" in result.stderr
    assert _count(audit_url) == before and not (tmp_path / "e.zip").exists()


def test_a_rewritten_history_is_never_summarised_by_pruning(honest, audit_url, tmp_path):
    from datetime import UTC, datetime, timedelta

    from granite_ops_kit.audit.service import prune
    from granite_ops_kit.errors import AuditChainBroken

    honest.close()
    _rewrite_history(audit_url)
    store = open_store(audit_url)
    later = datetime.now(UTC) + timedelta(days=4000)
    with pytest.raises(AuditChainBroken, match="no longer extends the tree of 6 records"):
        prune(store, 1095, tmp_path / "honest.pem", now=later)
    assert store.count() == 8 and store.anchor() is None


def test_an_edited_record_is_never_signed(honest, audit_url, tmp_path):
    text = next(r for _, r in honest.rows() if r["seq"] == 4)
    edited = json.dumps({**text, "outcome": "success"})  # was a failure; hash not redone
    _sql(honest, "UPDATE audit_records SET record = ? WHERE seq = 4", edited)
    key = ["--key", str(tmp_path / "honest.pem")]
    result = run_gkit("audit", "checkpoint", *key, "--audit-db", audit_url)
    assert result.returncode == 1, result.stderr
    assert "record 4: its contents do not match its hash" in result.stderr
    assert "nothing was signed" in result.stderr and _count(audit_url) == 8


def test_another_hosts_checkpoints_do_not_stop_this_hosts_signer(honest, audit_url, tmp_path):
    """Hosts sharing a store each sign with their own key: a signer checks what its own key
    signed, and leaves the others' signatures to an auditor who pins their keys."""
    sign_checkpoint(honest, tmp_path / "other.pem", "gkit-audit/other")
    record = sign_checkpoint(honest, tmp_path / "honest.pem", "gkit-audit/honest")
    assert record["details"]["size"] == 9
    pins = [_pin(tmp_path, tmp_path / f"{n}.pem", f"gkit-audit/{n}") for n in ("honest", "other")]
    result = _verify(audit_url, *pins)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["checkpoints"] == 3


def test_a_checkpoint_after_pruning_covers_the_pruned_records(audit_url, tmp_path):
    """A checkpoint signs the whole log's tree, the pruned records' leaves (from their
    signed summary) included, as verify counts it."""
    from datetime import datetime, timedelta

    from granite_ops_kit.audit.service import prune

    store = _fill(audit_url, 5)
    last = list(store.records())[-1]["time"]
    later = datetime.fromisoformat(last.replace("Z", "+00:00")) + timedelta(days=1096)
    assert prune(store, 1095, tmp_path / "k.pem", now=later)["last_seq"] == 5
    store.append(_event(9))
    record = sign_checkpoint(store, tmp_path / "k.pem", "gkit-audit/k")
    assert record["details"]["size"] == 7  # records 1..5 pruned, the pruning record, one more
    result = _verify(audit_url, _pin(tmp_path, tmp_path / "k.pem", None))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_checkpoint_note_with_a_second_signature_line_is_read_by_its_first(
    honest, audit_url, tmp_path
):
    """C2SP notes may carry several signature lines; the one for the pinned key is the first
    gkit writes. A line added after it (here one that is not base64 at all) changes nothing."""
    from granite_ops_kit.audit.records import Event, Subject
    from granite_ops_kit.audit.verify import CHECKPOINT_EVENT

    signed = next(r for r in honest.records() if r["event"] == CHECKPOINT_EVENT)
    details = {**signed["details"], "note": signed["details"]["note"] + "\u2014 other —\n"}
    honest.append(Event(CHECKPOINT_EVENT, Subject("gkit-audit/honest"), "success", details=details))
    result = _verify(audit_url, _pin(tmp_path, tmp_path / "honest.pem", None))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["checkpoints"] == 2


def test_pruning_summarises_every_record_it_removes_whatever_their_times(
    audit_url, tmp_path, monkeypatch
):
    """Hosts sharing a store may disagree on the clock: record 3 here is stamped later than
    record 4. Pruning removes records 1..4 (the newest one past the retention) and its
    summary holds all four leaves, so the rest of the chain still verifies."""
    from datetime import UTC, datetime

    from granite_ops_kit.audit import records
    from granite_ops_kit.audit.service import prune

    stamps = iter(["2020-01-01T00:00:01.000000Z", "2020-01-01T00:00:02.000000Z",
                   "2030-01-01T00:00:00.000000Z", "2020-01-01T00:00:04.000000Z",
                   "2030-01-01T00:00:05.000000Z"])  # fmt: skip
    monkeypatch.setattr(records, "now", lambda: next(stamps))
    store = _fill(audit_url, 5)
    monkeypatch.undo()
    summary = prune(store, 1095, tmp_path / "k.pem", now=datetime(2024, 1, 1, tzinfo=UTC))
    assert summary["last_seq"] == 4 and len(summary["leaves"]) == 4 * 64
    assert next(r["seq"] for r in store.records()) == 5
    result = _verify(audit_url, _pin(tmp_path, tmp_path / "k.pem", None))
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_key_signs_two_stores_named_alike_in_two_folders(tmp_path):
    """`sqlite:///audit.db` is another store in each folder: what the key signed for one
    never stands against the other."""
    key = ["--key", str(tmp_path / "k.pem")]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        _fill(f"sqlite:///{tmp_path / folder / 'audit.db'}", 3 if folder == "a" else 5).close()
        result = run_gkit("audit", "checkpoint", *key, "--audit-db", "sqlite:///audit.db",
                          cwd=tmp_path / folder)  # fmt: skip
        assert result.returncode == 0, result.stderr
    trees = json.loads((tmp_path / "k.pem.signed.json").read_text())
    assert {k.rsplit("/", 2)[-2]: v["size"] for k, v in trees.items()} == {"a": 3, "b": 5}


def test_an_encrypted_signing_key_is_one_sentence(audit_url, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (tmp_path / "enc.pem").write_bytes(pem)
    _fill(audit_url, 2).close()
    key = ["--key", str(tmp_path / "enc.pem")]
    result = run_gkit("audit", "checkpoint", *key, "--audit-db", audit_url)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "the audit signing key must not be encrypted" in result.stderr


def test_a_checkpoint_the_auditor_holds_catches_a_rewritten_history(honest, audit_url, tmp_path):
    """The rewriter drops the checkpoints inside the log; the auditor kept the note of an
    earlier one (as an evidence export hands it over): verify --checkpoint names the
    rewrite, where the chain alone still verifies."""
    from granite_ops_kit.audit.verify import CHECKPOINT_EVENT

    held = tmp_path / "note.txt"
    note = next(r for r in honest.records() if r["event"] == CHECKPOINT_EVENT)["details"]["note"]
    held.write_text(note)
    pin = _pin(tmp_path, tmp_path / "honest.pem", None)
    args = ("--checkpoint", str(held))
    assert _verify(audit_url, pin, *args).returncode == 0  # the honest log extends it
    honest.close()
    _rewrite_history(audit_url)
    assert _verify(audit_url, pin).returncode == 0  # the chain alone cannot tell
    message = _message(_verify(audit_url, pin, *args))
    assert "records 1..6 no longer give the root of the checkpoint you hold" in message
    forged = tmp_path / "forged.txt"
    forged.write_text(note.replace("\n6\n", "\n5\n", 1))  # the size edited: its signature fails
    message = _message(_verify(audit_url, pin, "--checkpoint", str(forged)))
    assert "signature does not verify" in message


def test_a_held_checkpoint_that_is_not_a_note_is_a_usage_error(honest, audit_url, tmp_path):
    (tmp_path / "junk.txt").write_text("not a note")
    result = _verify(audit_url, "--checkpoint", str(tmp_path / "junk.txt"))
    assert result.returncode == 2 and "is not a signed checkpoint note" in result.stdout
