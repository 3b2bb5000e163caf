"""Signing and verifying against the reference `model-signing`, and the tamper matrix.

Fixtures are signed inside the tests by the reference tool (its CLI for key and certificate,
its Python API for shards and blake3); gkit's own bundles are checked by `model_signing
verify`. Every tampering must fail with exit 1 and a sentence that names what happened.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests import pki
from tests.conftest import run_gkit

MODEL_SIGNING = [sys.executable, "-m", "model_signing"]


def make_model(root: Path) -> Path:
    """A small model whose paths sort differently by component and by string."""
    files = {
        "config.json": b'{"model_type": "granitemoehybrid"}',
        "model-00001-of-00002.safetensors": os.urandom(300_000),
        "model-00002-of-00002.safetensors": os.urandom(200_000),
        "a/b": b"component order puts me first",
        "a-b/x": b"then me",
        "a.txt": b"and me last",
        "empty.txt": b"",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def model(tmp_path) -> Path:
    return make_model(tmp_path / "model")


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    key = pki.new_key()
    return pki.write_key(key, d / "signer.pem"), pki.write_public(key, d / "signer.pub")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return pki.make_pki(tmp_path_factory.mktemp("pki"))


def ref(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MODEL_SIGNING, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def gkit_ok(*args) -> dict:
    result = run_gkit(*map(str, args), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def gkit_fails(*args) -> str:
    result = run_gkit(*map(str, args), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    return json.loads(result.stdout)["error"]["message"]


def sign_with_chain(model: Path, pki_set) -> dict:
    """gkit sign with a certificate and its intermediate (own-PKI signing)."""
    return gkit_ok(
        "sign",
        model,
        "--key",
        pki_set.leaf_key,
        "--certificate",
        pki_set.leaf,
        "--certificate-chain",
        pki_set.intermediate,
    )


# --- interop: the reference signs, gkit verifies ---------------------------------------


def test_reference_key_signature_verifies(model, keypair):
    r = ref("sign", "key", model, "--private_key", keypair[0], "--signature", model / "model.sig")
    assert r.returncode == 0, r.stderr
    out = gkit_ok("verify", model, "--public-key", keypair[1])
    assert out["method"] == "key" and out["files"] == 7
    assert out["serialization"] == {"method": "files", "hash_type": "sha256"}


def test_reference_certificate_signature_verifies_with_identity(model, chain):
    r = ref(
        "sign",
        "certificate",
        model,
        "--private_key",
        chain.leaf_key,
        "--signing_certificate",
        chain.leaf,
        "--certificate_chain",
        chain.intermediate,
        "--signature",
        model / "model.sig",
    )
    assert r.returncode == 0, r.stderr
    out = gkit_ok(
        "verify", model, "--certificate-chain", chain.root, "--identity", "ml-release@example.com"
    )
    assert out["method"] == "certificate"
    assert out["signer"]["identities"] == ["ml-release@example.com"]


def _api_sign(model: Path, key: Path, hashing_config) -> None:
    from model_signing import signing

    signing.Config().use_elliptic_key_signer(private_key=key).set_hashing_config(
        hashing_config
    ).sign(model, model / "model.sig")


@pytest.mark.parametrize(
    "variant", ["shards-sha256", "shards-blake2", "files-blake3", "files-blake2"]
)
def test_reference_api_shards_and_hashes_verify(model, keypair, variant):
    from model_signing import hashing

    method, alg = variant.split("-")
    cfg = hashing.Config()
    cfg = (
        cfg.use_shard_serialization(hashing_algorithm=alg, shard_size=65_536)
        if method == "shards"
        else cfg.use_file_serialization(hashing_algorithm=alg)
    )
    cfg = cfg.set_ignored_paths(paths=["model.sig"])
    _api_sign(model, keypair[0], cfg)
    out = gkit_ok("verify", model, "--public-key", keypair[1])
    assert out["serialization"]["method"] == method
    assert out["serialization"]["hash_type"] == {"blake2": "blake2b"}.get(alg, alg)
    if method == "shards":
        assert out["serialization"]["shard_size"] == 65_536


# --- interop: gkit signs, the reference verifies ----------------------------------------


def test_gkit_key_signature_verifies_with_reference(model, keypair):
    out = gkit_ok("sign", model, "--key", keypair[0])
    assert out["files"] == 7 and Path(out["signature"]) == model / "model.sig"
    r = ref("verify", "key", model, "--public_key", keypair[1], "--signature", model / "model.sig")
    assert r.returncode == 0 and "Verification succeeded" in r.stdout, r.stdout + r.stderr
    assert (
        gkit_ok("verify", model, "--public-key", keypair[1])["manifest_digest"]
        == out["manifest_digest"]
    )


def test_gkit_certificate_signature_verifies_with_reference(model, chain):
    sign_with_chain(model, chain)
    r = ref(
        "verify",
        "certificate",
        model,
        "--certificate_chain",
        chain.root,
        "--signature",
        model / "model.sig",
    )
    assert r.returncode == 0 and "Verification succeeded" in r.stdout, r.stdout + r.stderr


def test_gkit_shards_and_blake3_verify_with_reference_api(model, keypair):
    from model_signing import verifying

    for extra in (["--method", "shards", "--shard-size", "100000"], ["--hash", "blake3"]):
        gkit_ok("sign", model, "--key", keypair[0], *extra)
        verifying.Config().use_elliptic_key_verifier(public_key=keypair[1]).verify(
            model, model / "model.sig"
        )  # raises on failure
        gkit_ok("verify", model, "--public-key", keypair[1])


def test_single_file_model(tmp_path, keypair):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(50_000))
    out = gkit_ok("sign", weights, "--key", keypair[0])
    assert Path(out["signature"]) == tmp_path / "model.sig"
    r = ref(
        "verify", "key", weights, "--public_key", keypair[1], "--signature", tmp_path / "model.sig"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert gkit_ok("verify", weights, "--public-key", keypair[1])["files"] == 1


# --- the tamper matrix -------------------------------------------------------------------


@pytest.fixture
def signed(model, keypair):
    gkit_ok("sign", model, "--key", keypair[0])
    return model


def _bundle(model: Path) -> dict:
    return json.loads((model / "model.sig").read_text())


def _edit_payload(model: Path, edit) -> None:
    doc = _bundle(model)
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    edit(statement)
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (model / "model.sig").write_text(json.dumps(doc))


def _flip(path: Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


TAMPERS = {
    "flipped byte": (
        lambda m: _flip(m / "model-00002-of-00002.safetensors"),
        "'model-00002-of-00002.safetensors' has changed since it was signed",
    ),
    "added file": (
        lambda m: (m / "extra.py").write_text("print('hi')"),
        "not covered by the signature: extra.py",
    ),
    "removed file": (lambda m: (m / "a.txt").unlink(), "signed file(s) missing: a.txt"),
    "renamed file": (lambda m: (m / "a.txt").rename(m / "b.txt"), "'a.txt' was renamed to 'b.txt'"),
    "symlink outside": (lambda m: (m / "leak").symlink_to("/etc/passwd"), "leak in"),
    "truncated bundle": (
        lambda m: (m / "model.sig").write_text((m / "model.sig").read_text()[:300]),
        "ends early (truncated)",
    ),
    "edited payload": (
        lambda m: _edit_payload(
            m, lambda s: s["predicate"]["resources"][0].update(digest="00" * 32)
        ),
        "the signed statement was edited after signing",
    ),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampering_fails_with_its_reason(signed, keypair, tamper):
    action, words = TAMPERS[tamper]
    action(signed)
    message = gkit_fails("verify", signed, "--public-key", keypair[1])
    assert words in message


def test_symlink_message_says_outside(signed, keypair, tmp_path):
    (signed / "leak").symlink_to("/etc/passwd")
    assert "symbolic link" in gkit_fails("verify", signed, "--public-key", keypair[1])
    policy = json.loads((Path(__file__).parents[1] / "policies" / "default.json").read_text())
    policy.update(id="links-ok", allow_symlinks=True)
    (tmp_path / "links.json").write_text(json.dumps(policy))
    message = gkit_fails(
        "verify", signed, "--public-key", keypair[1], "--policy", tmp_path / "links.json"
    )
    assert "outside the model directory" in message


def test_wrong_key(signed):
    other = pki.write_public(pki.new_key(), signed.parent / "other.pub")
    assert "was signed by a different key" in gkit_fails("verify", signed, "--public-key", other)


def test_wrong_identity(model, chain):
    sign_with_chain(model, chain)
    message = gkit_fails(
        "verify", model, "--certificate-chain", chain.root, "--identity", "someone-else@example.com"
    )
    assert (
        "identity ['ml-release@example.com'] is not one of ['someone-else@example.com']" in message
    )


def test_wrong_issuer():
    from tests.test_supply_vectors import FIXTURES

    message = gkit_fails(
        "verify",
        FIXTURES / "v1.1.0-sigstore",
        "--identity",
        "stefanb@us.ibm.com",
        "--issuer",
        "https://accounts.google.com",
    )
    assert (
        "signed through issuer https://sigstore.verify.ibm.com/oauth2, not "
        "https://accounts.google.com" in message
    )


def test_expired_leaf_fails_unless_policy_accepts_signing_time(model, tmp_path):
    past = pki.NOW - timedelta(days=30)
    old = pki.make_pki(
        tmp_path / "old", "old", leaf_not_before=past - timedelta(days=10), leaf_not_after=past
    )
    # the reference signs with an expired leaf and its verifier accepts it
    r = ref(
        "sign",
        "certificate",
        model,
        "--private_key",
        old.leaf_key,
        "--signing_certificate",
        old.leaf,
        "--certificate_chain",
        old.intermediate,
        "--signature",
        model / "model.sig",
    )
    assert r.returncode == 0, r.stderr
    r = ref(
        "verify",
        "certificate",
        model,
        "--certificate_chain",
        old.root,
        "--signature",
        model / "model.sig",
    )
    assert r.returncode == 0, "the reference accepts an expired leaf (REFERENCE.md 4)"
    message = gkit_fails("verify", model, "--certificate-chain", old.root)
    assert "the signing certificate expired on" in message
    policy = json.loads((Path(__file__).parents[1] / "policies" / "default.json").read_text())
    policy.update(id="signing-time", accept_signing_time_validity=True)
    (tmp_path / "p.json").write_text(json.dumps(policy))
    gkit_ok("verify", model, "--certificate-chain", old.root, "--policy", tmp_path / "p.json")


def test_leaf_without_code_signing_usage(model, tmp_path):
    web = pki.make_pki(tmp_path / "web", "web", code_signing=False)
    sign_with_chain(model, web)
    message = gkit_fails("verify", model, "--certificate-chain", web.root)
    assert "key usage does not include digitalSignature" in message


def test_untrusted_root(model, chain, tmp_path):
    sign_with_chain(model, chain)
    stranger = pki.make_pki(tmp_path / "s", "stranger")
    message = gkit_fails("verify", model, "--certificate-chain", stranger.root)
    assert "does not lead to a trusted root" in message and "pki-intermediate" in message


def test_pickle_weights_fail_the_default_policy(model, keypair):
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    gkit_ok("sign", model, "--key", keypair[0])
    message = gkit_fails("verify", model, "--public-key", keypair[1])
    assert "pytorch_model.bin is a pickle-format weight file" in message


def test_corrupt_bundle_fields_are_named(signed, keypair):
    doc = _bundle(signed)
    doc["dsseEnvelope"]["signatures"][0]["sig"] = "not base64!"
    (signed / "model.sig").write_text(json.dumps(doc))
    assert "dsseEnvelope.signatures[0].sig is not valid base64" in gkit_fails(
        "verify", signed, "--public-key", keypair[1]
    )


def test_usage_errors_exit_2(model, keypair, tmp_path):
    assert run_gkit("verify", str(tmp_path / "nope")).returncode == 2
    no_sig = run_gkit("verify", str(model), "--public-key", str(keypair[1]))
    assert no_sig.returncode == 2 and "model.sig does not exist" in no_sig.stderr
    gkit_ok("sign", model, "--key", keypair[0])
    no_key = run_gkit("verify", str(model))
    assert no_key.returncode == 2 and "pass --public-key" in no_key.stderr


def test_verify_and_sign_are_audited(model, keypair, _private_audit_log):
    from granite_ops_kit.audit.store import open_store

    signed = gkit_ok("sign", model, "--key", keypair[0])
    gkit_ok("verify", model, "--public-key", keypair[1])
    _flip(model / "a.txt", 0)
    gkit_fails("verify", model, "--public-key", keypair[1])
    store = open_store(f"sqlite:///{_private_audit_log}")
    rows = [(r["event"], r["outcome"], r["subject"]["digest"]) for r in store.records()]
    assert rows[0] == ("artifact.signed", "success", signed["manifest_digest"])
    assert rows[1] == ("artifact.verified", "success", signed["manifest_digest"])
    assert rows[2][:2] == ("artifact.verification_failed", "failure")


def test_sign_never_writes_a_partial_signature(model, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    result = run_gkit("sign", str(model), "--key", str(bad))
    assert result.returncode == 2 and "not a usable PEM private key" in result.stderr
    assert not (model / "model.sig").exists()
    assert not list(model.glob(".model.sig.*"))


def test_git_paths_are_left_out(signed, keypair):
    (signed / ".git").mkdir()
    (signed / ".git" / "HEAD").write_text("ref: main")
    shutil.copy(signed / "a.txt", signed / ".gitattributes")
    assert gkit_ok("verify", signed, "--public-key", keypair[1])["files"] == 7
