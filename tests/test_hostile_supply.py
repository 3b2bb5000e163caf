"""Attacks on the verifier and the deploy gate, each reproduced against the real CLI.

The attacker can write any file in the model directory (and the bundle in it) but holds no
pinned private key. Honest signatures are made by the reference `model_signing`; where the
reference has an opinion on a hostile bundle, the same test asks it too. Every case must end
in one sentence and exit 1 or 2: never a traceback, never a pass.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from granite_ops_kit.audit import events
from granite_ops_kit.policy import engine
from tests import pki
from tests.conftest import REPO, run_gkit

MODEL_SIGNING = [sys.executable, "-m", "model_signing"]
VECTORS = REPO / "tests" / "fixtures" / "oms-upstream"
IBM_ISSUER = "https://sigstore.verify.ibm.com/oauth2"


# --- helpers ----------------------------------------------------------------------------


@dataclass
class Key:
    private: Path
    public: Path
    fingerprint: str


def make_key(d: Path, name: str) -> Key:
    from granite_ops_kit.supply.trust import key_hint

    k = pki.new_key()
    d.mkdir(parents=True, exist_ok=True)
    return Key(
        pki.write_key(k, d / f"{name}.pem"),
        pki.write_public(k, d / f"{name}.pub"),
        key_hint(k.public_key()),
    )


def ref(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MODEL_SIGNING, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def ref_sign(model: Path, key: Key, *extra) -> None:
    r = ref(
        "sign",
        "key",
        model,
        "--private_key",
        key.private,
        "--signature",
        model / "model.sig",
        *extra,
    )
    assert r.returncode == 0, r.stderr


def ref_verifies(model: Path, key: Key) -> bool:
    r = ref("verify", "key", model, "--public_key", key.public, "--signature", model / "model.sig")
    return r.returncode == 0


def gkit(*args, timeout: float = 120) -> tuple[int, dict, str]:
    r = run_gkit(*map(str, args), "--json", timeout=timeout)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    try:
        doc = json.loads(r.stdout) if r.stdout.strip() else {}
    except json.JSONDecodeError:
        doc = {}
    return r.returncode, doc, r.stdout + r.stderr


def refused(*args, code: int = 1) -> str:
    rc, doc, text = gkit(*args)
    assert rc == code, text
    message = doc["error"]["message"]
    assert "\n" not in message and len(message) < 600, message
    return message


# A small launcher between pytest and gkit: a child forked from pytest itself would report
# pytest's resident pages (torch included) as its own peak until it execs.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "granite_ops_kit", *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\nPEAK_RSS_KB={usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def bounded_run(*args: str, limit_s: float = 2.0) -> tuple[int, str, float, float]:
    """Run gkit; return (rc, output, seconds, peak RSS in MB) of the gkit process alone."""
    start = time.perf_counter()
    try:
        r = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *args],
            capture_output=True,
            text=True,
            timeout=limit_s * 5,  # a hang still ends, and fails on the time below
        )
    except subprocess.TimeoutExpired:
        return -1, "timed out", time.perf_counter() - start, 0.0
    seconds = time.perf_counter() - start
    err, _, peak = r.stderr.rpartition("\nPEAK_RSS_KB=")
    return r.returncode, (r.stdout + err).strip(), seconds, int(peak) / 1024


def read_bundle(model: Path) -> dict:
    return json.loads((model / "model.sig").read_text())


def payload_of(bundle: dict) -> dict:
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def write_bundle(model: Path, bundle: dict, statement: dict | None = None) -> None:
    if statement is not None:
        raw = json.dumps(statement).encode()
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(raw).decode()
    (model / "model.sig").write_text(json.dumps(bundle))


def sign_statement(model: Path, key: Key, statement: dict) -> None:
    """A real signature over a statement the test wrote: what a careless or hostile signer
    holding a pinned key could produce (the reference signer never writes these)."""
    from granite_ops_kit.supply import bundle as bundle_io

    private = serialization.load_pem_private_key(key.private.read_bytes(), None)
    payload = json.dumps(statement).encode()
    sig = private.sign(bundle_io.pae(payload), ec.ECDSA(pki.hashes.SHA256()))
    material = {"publicKey": {"hint": key.fingerprint}}
    (model / "model.sig").write_text(json.dumps(bundle_io.envelope_bundle(payload, sig, material)))


def statement_for(model: Path, *, ignore: list[str] = (), rename: dict | None = None) -> dict:
    """The v1.0 statement of the model as it is (sha256, files), optionally edited."""
    import hashlib

    from granite_ops_kit.supply import model_files, statement

    files = model_files.list_files(model, ["model.sig", *ignore])
    resources = {
        (rename or {}).get(f.name, f.name): (
            "sha256",
            hashlib.sha256(f.path.read_bytes()).hexdigest(),
        )
        for f in files
    }
    ser = {
        "method": "files",
        "hash_type": "sha256",
        "allow_symlinks": False,
        "ignore_paths": ["model.sig", *ignore],
    }
    return statement.build(model.name, resources, ser)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Key]:
    d = tmp_path_factory.mktemp("keys")
    return {name: make_key(d, name) for name in ("signer", "attacker", "other")}


@pytest.fixture
def model(tmp_path, tiny_hybrid) -> Path:
    dest = tmp_path / "granite-tiny"
    shutil.copytree(tiny_hybrid, dest)
    return dest


@pytest.fixture
def signed(model, keys) -> Path:
    """Signed by the reference and verified by gkit with the pinned key: the honest path."""
    ref_sign(model, keys["signer"])
    rc, _, text = gkit("verify", model, "--public-key", keys["signer"].public)
    assert rc == 0, text
    return model


def deploy(model: Path, tmp: Path, *extra) -> tuple[int, dict, str]:
    return gkit("deploy", model, "--gpus", "1", "--output", tmp / "out", *extra)


# --- 1. the deploy gate checks the signature again, with pinned inputs -------------------


def test_honest_path_verify_then_deploy_passes(signed, keys, tmp_path):
    rc, out, text = deploy(signed, tmp_path)
    assert rc == 0, text
    assert out["verification"].startswith("verified (audit record ")
    assert "signature checked again with the trust inputs of audit record" in out["verification"]
    assert out["signer"]["key_fingerprint"] == keys["signer"].fingerprint


def test_forged_rename_bundle_is_refused_by_deploy(signed, keys, tmp_path):
    weights = signed / "model.safetensors"
    assert weights.is_file()
    weights.rename(signed / "orig.safetensors")
    data = bytearray((signed / "orig.safetensors").read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))  # tampered weights under the served name
    bundle = read_bundle(signed)
    statement = payload_of(bundle)
    for r in statement["predicate"]["resources"]:
        if r["name"] == "model.safetensors":
            r["name"] = "orig.safetensors"
    statement["predicate"]["serialization"]["ignore_paths"].append("model.safetensors")
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(b"\x30" * 70).decode()
    write_bundle(signed, bundle, statement)
    rc, out, text = deploy(signed, tmp_path)
    assert rc == 1, text
    assert "signature does not verify" in out["error"]["message"]
    assert not (tmp_path / "out").exists()  # nothing rendered
    assert not ref_verifies(signed, keys["signer"])


def _edit_resource_name(b, s):
    s["predicate"]["resources"][0]["name"] = "renamed.json"


def _edit_ignore_paths(b, s):
    s["predicate"]["serialization"]["ignore_paths"].append("model.safetensors")


def _edit_shard_size(b, s):
    s["predicate"]["serialization"].update(method="shards", shard_size=1)


def _edit_hash_type(b, s):
    s["predicate"]["serialization"]["hash_type"] = "blake2b"


def _edit_payload_type(b, s):
    b["dsseEnvelope"]["payloadType"] = "application/json"


def _edit_key_hint(b, s):
    b["verificationMaterial"]["publicKey"]["hint"] = "00" * 32


def _edit_media_type(b, s):
    b["mediaType"] = "application/vnd.dev.sigstore.bundle.v0.1+json"


BUNDLE_EDITS = {
    "resource name": (_edit_resource_name, "signature does not verify"),
    "ignore paths": (_edit_ignore_paths, "signature does not verify"),
    "shard size": (_edit_shard_size, "signature does not verify"),
    "hash type": (_edit_hash_type, "signature does not verify"),
    "payload type": (_edit_payload_type, "payloadType"),
    "key hint": (_edit_key_hint, "key hint"),
    "media type": (_edit_media_type, "mediaType"),
}


@pytest.mark.parametrize("edit", list(BUNDLE_EDITS))
def test_a_bundle_edited_in_any_field_is_refused_by_deploy(signed, tmp_path, edit):
    action, words = BUNDLE_EDITS[edit]
    bundle = read_bundle(signed)
    statement = payload_of(bundle)
    action(bundle, statement)
    write_bundle(signed, bundle, statement)
    rc, out, text = deploy(signed, tmp_path)
    assert rc == 1, text
    assert words in out["error"]["message"]


def test_deploy_checks_with_the_recorded_key_not_the_attackers(signed, keys, tmp_path):
    """The attacker re-signs tampered weights with a key of their own: the gate checks with
    the key `gkit verify` pinned, never one the model directory offers."""
    (signed / "model.safetensors").write_bytes(b"\0" * 1024)
    ref_sign(signed, keys["attacker"])
    message = deploy(signed, tmp_path)[1]["error"]["message"]
    assert "signed by a different key" in message and keys["attacker"].fingerprint in message


def _forge_verification(model: Path, key: Key, audit_db: Path, copy_attestation: bool) -> None:
    """What an attacker who can write the audit store appends (no key needed: the store
    computes the chain's hashes): a passing verification of the tampered model whose trust
    inputs name the attacker's own key, bare or with the honest record's attestation."""
    from granite_ops_kit.audit.store import open_store
    from granite_ops_kit.supply.trust import TrustInputs
    from granite_ops_kit.supply.verify import VerifyRequest, verify

    inputs = TrustInputs.from_files(public_key=key.public)
    result = verify(VerifyRequest(model_path=model, trust=inputs))
    store = open_store(f"sqlite:///{audit_db}")
    try:
        honest = [r for r in store.records() if r["event"] == "artifact.verified"][-1]
        claim = honest["details"]["trust_attestation"] if copy_attestation else None
        store.append(events.verified(result, attestation=claim))
    finally:
        store.close()


@pytest.mark.parametrize("copy_attestation", [False, True], ids=["bare", "honest-attestation"])
def test_a_verification_forged_into_the_audit_store_is_not_trusted(
    signed, keys, tmp_path, _private_audit_log, copy_attestation
):
    """The attacker re-signs tampered weights and appends a 'verified' record that pins
    their key: the gate takes recorded trust inputs only under this host's audit key's
    signature over them, which the attacker cannot make (nor reuse from another record)."""
    (signed / "model.safetensors").write_bytes(b"\0" * 1024)
    ref_sign(signed, keys["attacker"])
    _forge_verification(signed, keys["attacker"], _private_audit_log, copy_attestation)
    rc, out, text = deploy(signed, tmp_path)
    assert rc == 1, text
    assert "not signed by this host's audit key" in out["error"]["message"]
    assert not (tmp_path / "out").exists()


def test_verification_record_keeps_the_trust_inputs(signed, keys, _private_audit_log):
    from granite_ops_kit.audit.store import open_store

    store = open_store(f"sqlite:///{_private_audit_log}")
    try:
        verified = [r for r in store.records() if r["event"] == "artifact.verified"]
    finally:
        store.close()
    trust = verified[-1]["details"]["trust"]
    assert trust["public_keys"] == [
        {"fingerprint": keys["signer"].fingerprint, "pem": keys["signer"].public.read_text()}
    ]


def _pinning_policy(tmp: Path, fingerprints: list[str]) -> Path:
    policy = json.loads((REPO / "policies" / "default.json").read_text())
    policy["id"] = "pinned"
    policy["signers"]["public_keys"] = fingerprints
    path = tmp / "pinned.json"
    path.write_text(json.dumps(policy))
    return path


def test_a_pinning_policy_refuses_an_unpinned_key(signed, keys, tmp_path):
    policy = _pinning_policy(tmp_path, [f"sha256:{keys['other'].fingerprint}"])
    rc, out, text = deploy(signed, tmp_path, "--policy", policy)
    assert rc == 1, text
    message = out["error"]["message"]
    assert keys["signer"].fingerprint in message and keys["other"].fingerprint in message


def test_a_pinning_policy_accepts_its_pinned_key(signed, keys, tmp_path):
    colons = ":".join(keys["signer"].fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    policy = _pinning_policy(tmp_path, [colons])  # as openssl prints fingerprints
    rc, _, text = deploy(signed, tmp_path, "--policy", policy)
    assert rc == 0, text


def test_ibm_granite_pins_both_current_identities():
    policy = json.loads((REPO / "policies" / "ibm-granite.json").read_text())
    assert policy["sigstore"]["issuer"] == IBM_ISSUER
    assert {"Granite-sign@ibm.com", "Granite-verify@ibm.com"} <= set(
        policy["sigstore"]["identities"]
    )


def test_deploy_without_any_verification_names_what_to_do(model, keys, tmp_path):
    ref_sign(model, keys["signer"])
    message = refused("deploy", model, "--gpus", "1", "--output", tmp_path / "out")
    assert "no passing 'gkit verify' is recorded" in message


# --- 2. bounded reads ---------------------------------------------------------------


def _dev_zero(sig: Path) -> None:
    sig.symlink_to("/dev/zero")


def _fifo(sig: Path) -> None:
    os.mkfifo(sig)


def _directory(sig: Path) -> None:
    sig.mkdir()
    (sig / "model.sig").write_text("{}")


def _deep(sig: Path) -> None:
    sig.write_text("[" * 100_000 + "]" * 100_000)


def _deep_object(sig: Path) -> None:
    sig.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)


def _long_number(sig: Path) -> None:
    # json.loads refuses integers of more than 4,300 digits with a ValueError of its own
    sig.write_text('{"mediaType": ' + "9" * 5000 + "}")


HOSTILE_SIGNATURES = {
    "link to /dev/zero": _dev_zero,
    "FIFO": _fifo,
    "directory": _directory,
    "100,000-deep array": _deep,
    "100,000-deep object": _deep_object,
    "5,000-digit number": _long_number,
}


@pytest.mark.parametrize("command", ["verify", "deploy", "build"])
@pytest.mark.parametrize("kind", list(HOSTILE_SIGNATURES))
def test_hostile_signature_file_is_refused_fast_and_small(model, keys, tmp_path, kind, command):
    sig = model / "model.sig"
    HOSTILE_SIGNATURES[kind](sig)
    args = {
        "verify": ["verify", str(model), "--public-key", str(keys["signer"].public)],
        "deploy": [
            "deploy",
            str(model),
            "--gpus",
            "1",
            "--output",
            str(tmp_path / "o"),
            "--public-key",
            str(keys["signer"].public),
        ],
        "build": ["build", str(model), "--public-key", str(keys["signer"].public)],
    }[command]
    rc, out, seconds, rss_mb = bounded_run(*args)
    assert rc in (1, 2), out
    assert "Traceback" not in out and str(sig) in out, out
    assert seconds < 2.0 and rss_mb < 200, (seconds, rss_mb)
    assert len(out.strip().splitlines()) == 1, out


def test_a_small_signed_shard_size_with_many_shards_is_refused_fast(model, keys):
    from model_signing import hashing, signing

    from granite_ops_kit.supply import statement

    for p in model.iterdir():
        if p.name != "config.json":
            p.unlink()
    (model / "model.safetensors").write_bytes(os.urandom(statement.MAX_SMALL_SHARDS + 100))
    cfg = (
        hashing.Config()
        .use_shard_serialization(shard_size=1)
        .set_ignored_paths(paths=["model.sig"])
    )
    signing.Config().use_elliptic_key_signer(private_key=keys["signer"].private).set_hashing_config(
        cfg
    ).sign(model, model / "model.sig")
    rc, out, seconds, rss_mb = bounded_run(
        "verify", str(model), "--public-key", str(keys["signer"].public)
    )
    assert rc == 1 and "below 1 MiB" in out, out
    assert seconds < 5.0 and rss_mb < 200, (seconds, rss_mb)


def test_a_small_shard_size_with_few_shards_still_verifies(model, keys):
    from model_signing import hashing, signing

    cfg = (
        hashing.Config()
        .use_shard_serialization(shard_size=512 << 10)
        .set_ignored_paths(paths=["model.sig"])
    )
    signing.Config().use_elliptic_key_signer(private_key=keys["signer"].private).set_hashing_config(
        cfg
    ).sign(model, model / "model.sig")
    rc, out, text = gkit("verify", model, "--public-key", keys["signer"].public)
    assert rc == 0, text
    assert out["serialization"]["shard_size"] == 512 << 10


@pytest.mark.parametrize("what", ["public key", "trust config", "policy"])
def test_hostile_trust_files_are_refused(model, keys, what):
    fifo = model.parent / "fifo"
    os.mkfifo(fifo)
    ref_sign(model, keys["signer"])
    flag = {"public key": "--public-key", "trust config": "--trust-config", "policy": "--policy"}
    args = ["verify", str(model), flag[what], str(fifo)]
    if what != "public key":
        args += ["--public-key", str(keys["signer"].public)]
    rc, out, seconds, _ = bounded_run(*args)
    assert rc == 2 and "FIFO" in out and seconds < 2.0, out


@pytest.mark.parametrize(
    ("rego", "says"),
    [
        ("/dev/zero", "Rego module /dev/zero is a device, not a regular file"),
        (5, "'rego' must be the path of a Rego module"),
        ("missing.rego", "missing.rego does not exist"),
        ("binary.rego", "binary.rego is not UTF-8 text"),
    ],
    ids=["dev-zero", "a-number", "missing", "binary"],
)
def test_a_policy_naming_a_hostile_rego_module_is_refused(model, keys, tmp_path, rego, says):
    """A policy file names its Rego module: read bounded, as the policy itself is (a link
    to /dev/zero never reaches memory), and what is hashed is what ran."""
    ref_sign(model, keys["signer"])
    (tmp_path / "binary.rego").write_bytes(b"\xff\xfe" * 64)
    policy = json.loads((Path(engine.policies_dir()) / "default.json").read_text())
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({**policy, "rego": rego}))
    args = ["verify", str(model), "--policy", str(path), "--public-key", str(keys["signer"].public)]
    rc, out, seconds, rss_mb = bounded_run(*args)
    assert rc == 2 and says in out and "Traceback" not in out, out
    assert seconds < 2.0 and rss_mb < 200, (seconds, rss_mb)


# --- 3. path rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "words", "reference_refuses"),
    [
        ({"ignore": ["sub/../model.safetensors"]}, "'..' component", True),
        ({"rename": {"config.json": "../config.json"}}, "'..' component", True),
        ({"rename": {"config.json": "/etc/config.json"}}, "absolute path", True),
        # the reference normalises "./x" to "x" and passes it; gkit is stricter: one file,
        # one name
        ({"rename": {"config.json": "./config.json"}}, "empty, '.' or '..' component", False),
    ],
    ids=["ignore dot-dot", "name dot-dot", "absolute name", "dot name"],
)
def test_signed_paths_that_escape_or_alias_are_refused(model, keys, edit, words, reference_refuses):
    sign_statement(model, keys["signer"], statement_for(model, **edit))
    message = refused("verify", model, "--public-key", keys["signer"].public)
    assert words in message
    assert ref_verifies(model, keys["signer"]) is not reference_refuses


def test_a_signature_that_ignores_every_weight_file_is_refused(model, keys):
    ref_sign(model, keys["signer"], "--ignore-paths", model / "model.safetensors")
    assert ref_verifies(model, keys["signer"])  # the reference has no such rule
    message = refused("verify", model, "--public-key", keys["signer"].public)
    assert "covers no weight file" in message


# --- 4. certificate chains: cryptography's path validation -------------------------------


def _chain(
    d: Path,
    *,
    root_path_length=None,
    two_intermediates=False,
    permitted=None,
    code_signing=True,
    intermediate_expired=False,
):
    """root -> intermediate(s) -> leaf, written as PEMs; returns (root, chain, leaf, key)."""
    root_key, int_key, leaf_key = pki.new_key(), pki.new_key(), pki.new_key()
    since = pki.NOW - timedelta(days=400)
    root = pki.certificate(
        root_key,
        "root",
        ca=True,
        not_before=since,
        path_length=root_path_length,
        permitted_emails=permitted,
    )
    expired = pki.NOW - timedelta(days=1) if intermediate_expired else None
    inter = pki.certificate(
        int_key, "inter", root_key, "root", ca=True, not_before=since, not_after=expired
    )
    chain, issuer_key, issuer_cn = [inter], int_key, "inter"
    if two_intermediates:
        k2 = pki.new_key()
        chain.append(pki.certificate(k2, "inter2", int_key, "inter", ca=True, not_before=since))
        issuer_key, issuer_cn = k2, "inter2"
    leaf = pki.certificate(
        leaf_key,
        "signer",
        issuer_key,
        issuer_cn,
        ca=False,
        code_signing=code_signing,
        san_email="ml-release@example.com",
    )
    d.mkdir(parents=True, exist_ok=True)
    chain_pem = d / "chain.pem"
    chain_pem.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in reversed(chain))
    )
    return (
        pki.write_cert(root, d / "root.pem"),
        chain_pem,
        pki.write_cert(leaf, d / "leaf.pem"),
        pki.write_key(leaf_key, d / "leaf.key"),
    )


def _sign_with_chain(model: Path, d: Path, **shape) -> Path:
    """gkit sign with a leaf of a chain made to `shape`; returns the root to pin."""
    root, chain, leaf, key = _chain(d, **shape)
    r = run_gkit(
        "sign",
        str(model),
        "--key",
        str(key),
        "--certificate",
        str(leaf),
        "--certificate-chain",
        str(chain),
    )
    assert r.returncode == 0, r.stderr
    return root


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ({"root_path_length": 0}, "path length"),
        ({"permitted": ["example.org"]}, "name constraints matched"),
        ({"code_signing": False}, "usage"),
        ({"intermediate_expired": True}, "not valid at validation time"),
    ],
    ids=["pathLen", "name constraint", "code-signing usage", "expired CA"],
)
def test_certificate_chains_violating_constraints_are_refused(model, tmp_path, shape, words):
    if shape.get("root_path_length") == 0:
        shape["two_intermediates"] = True
    root = _sign_with_chain(model, tmp_path / "pki", **shape)
    message = refused("verify", model, "--certificate-chain", root)
    assert words in message.lower() or words in message, message


def test_a_good_chain_still_verifies_and_reports_its_root(model, tmp_path):
    from cryptography import x509

    root = _sign_with_chain(model, tmp_path / "pki", root_path_length=1)
    rc, out, text = gkit("verify", model, "--certificate-chain", root)
    assert rc == 0, text
    expected = x509.load_pem_x509_certificate(root.read_bytes()).fingerprint(pki.hashes.SHA256())
    assert out["signer"]["root_fingerprint"] == expected.hex()


# --- 5. sigstore's errors, in one sentence ----------------------------------------------


def test_an_altered_rekor_inclusion_proof_fails_in_one_sentence(tmp_path):
    vector = tmp_path / "v1.1.0-sigstore"
    shutil.copytree(VECTORS / "v1.1.0-sigstore", vector)
    bundle = read_bundle(vector)
    entry = bundle["verificationMaterial"]["tlogEntries"][0]
    assert entry["kindVersion"]["kind"] == "dsse"  # IBM's shape: Rekor v1 dsse entry
    assert bundle["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]
    entry["inclusionProof"]["hashes"][0] = base64.b64encode(b"\0" * 32).decode()
    write_bundle(vector, bundle)
    message = refused(
        "verify",
        vector,
        "--identity",
        "stefanb@us.ibm.com",
        "--issuer",
        IBM_ISSUER,
        "--ignore-paths",
        "ignore-me",
    )
    assert "the Rekor inclusion proof does not match its checkpoint" in message
    assert len(message) < 300 and "\\x" not in message


# --- 6. malformed model files: one sentence, never a traceback ----------------------------


def _config_edit(**changes):
    def edit(model: Path) -> None:
        config = json.loads((model / "config.json").read_text())
        config.update(changes)
        (model / "config.json").write_text(json.dumps(config))

    return edit


def _write(name: str, text: str):
    def edit(model: Path) -> None:
        (model / name).write_text(text)

    return edit


def _index_weight_map_list(model: Path) -> None:
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a", "b"]}))


MALFORMED = {
    "zero heads": _config_edit(num_attention_heads=0),
    "zero mamba groups": _config_edit(mamba_n_groups=0),
    "negative vocab": _config_edit(vocab_size=-5),
    "dict eos_token_id": _config_edit(eos_token_id={"id": 1}),
    "string hidden size": _config_edit(hidden_size="wide"),
    "garbage config": _write("config.json", "\x00\x01garbage"),
    "config is a list": _write("config.json", "[1, 2, 3]"),
    "deep config": _write("config.json", "[" * 100_000 + "]" * 100_000),
    "index weight_map is a list": _index_weight_map_list,
    "garbage tokenizer_config": _write("tokenizer_config.json", "{not json"),
    "deep tokenizer_config": _write(
        "tokenizer_config.json", '{"a":' * 100_000 + "1" + "}" * 100_000
    ),
    "generation eos dict": _write("generation_config.json", '{"eos_token_id": {"x": 1}}'),
}
SIZE_ONLY_READS_CONFIG = {
    "index weight_map is a list",
    "garbage tokenizer_config",
    "deep tokenizer_config",
    "generation eos dict",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_model_files_fail_in_one_sentence(model, case):
    MALFORMED[case](model)
    commands = [["generate", model, "--prompt", "hi", "--max-tokens", "1", "--device", "cpu"]]
    if case not in SIZE_ONLY_READS_CONFIG:
        commands.append(["size", model, "--gpu", "h100-80gb"])
    for command in commands:
        rc, out, text = gkit(*command)
        assert rc in (1, 2), text
        message = out["error"]["message"]
        assert "\n" not in message and len(message) < 400, message


def test_a_file_grown_past_its_signed_shards_is_refused_before_hashing(model, keys):
    """The attacker cannot change the signed shard size, but can grow a file: 2 signed
    shards of 1 MiB, the weights then extended (sparse) to 64 GiB. gkit counts the pieces
    the files would make against the statement (supply.measure's check) and refuses in
    one sentence without reading a byte of the grown file."""
    from model_signing import hashing, signing

    for p in model.iterdir():
        if p.name != "config.json":
            p.unlink()
    weights = model / "model.safetensors"
    weights.write_bytes(os.urandom(2 << 20))
    cfg = (
        hashing.Config()
        .use_shard_serialization(shard_size=1 << 20)
        .set_ignored_paths(paths=["model.sig"])
    )
    signing.Config().use_elliptic_key_signer(private_key=keys["signer"].private).set_hashing_config(
        cfg
    ).sign(model, model / "model.sig")
    os.truncate(weights, 64 << 30)
    rc, out, seconds, rss_mb = bounded_run(
        "verify", str(model), "--public-key", str(keys["signer"].public)
    )
    assert rc == 1 and "but the files make" in out and "not the files signed" in out, out
    assert len(out.strip().splitlines()) == 1, out
    assert seconds < 5.0 and rss_mb < 200, (seconds, rss_mb)
