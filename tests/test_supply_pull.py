"""`gkit pull` against a Hugging Face cache laid out as huggingface_hub writes it (the Hub is
not reachable here), with HF_HUB_OFFLINE=1; then the pulled copy is verified per policy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from tests import pki
from tests.conftest import run_gkit
from tests.test_supply_sign import make_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(cache: Path, repo_id: str, model: Path) -> Path:
    """models--org--name/{blobs,refs/main,snapshots/COMMIT} with relative blob links."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for src in sorted(p for p in model.rglob("*") if p.is_file()):
        blob = hashlib.sha256(src.read_bytes()).hexdigest()
        shutil.copy(src, repo / "blobs" / blob)
        link = snap / src.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    return snap


def signed_cache(tmp_path: Path, tamper: bool = False) -> tuple[dict, Path]:
    """A signed model in a Hub cache (changed after signing if `tamper`): env and key."""
    key = pki.new_key()
    priv, pub = pki.write_key(key, tmp_path / "k.pem"), pki.write_public(key, tmp_path / "k.pub")
    model = make_model(tmp_path / "src")
    assert run_gkit("sign", str(model), "--key", str(priv)).returncode == 0
    if tamper:
        (model / "a.txt").write_text("swapped after signing")
    hub_cache(tmp_path / "hf", "acme/granite-demo", model)
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hf"),
        "HF_HOME": str(tmp_path / "home"),
    }
    return env, pub


def pull(env: dict, pub: Path, dest: Path, *extra: str):
    return run_gkit(
        "pull",
        "acme/granite-demo",
        "--dest",
        str(dest),
        "--policy",
        "default",
        "--public-key",
        str(pub),
        *extra,
        env=env,
    )


def test_pull_offline_from_cache_then_verify(tmp_path):
    env, pub = signed_cache(tmp_path)
    dest = tmp_path / "pulled"
    result = pull(env, pub, dest, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["commit"] == COMMIT and out["revision"] == "main"
    assert out["files"] == 8  # 7 model files and model.sig
    assert out["verification"]["method"] == "key" and out["verification"]["files"] == 7
    assert not any(p.is_symlink() for p in dest.rglob("*"))  # real files, not cache links
    # the same commit asked for by hash resolves to itself
    again = pull(env, pub, dest, "--revision", COMMIT, "--json")
    assert json.loads(again.stdout)["commit"] == COMMIT


def test_pull_is_audited_with_its_commit(tmp_path, _private_audit_log):
    from granite_ops_kit.audit.store import Query, open_store

    env, pub = signed_cache(tmp_path)
    assert pull(env, pub, tmp_path / "pulled").returncode == 0
    store = open_store(f"sqlite:///{_private_audit_log}")
    pulled = list(store.records(Query(event="artifact.pulled")))
    assert [(r["subject"]["name"], r["subject"]["revision"]) for r in pulled] == [
        ("hf://acme/granite-demo", COMMIT)
    ]
    assert [r["event"] for r in store.records()][-1] == "artifact.verified"


def test_pull_offline_of_a_missing_repo_says_so(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "HF_HOME": str(tmp_path)}
    result = run_gkit("pull", "acme/absent", "--dest", str(tmp_path / "d"), env=env)
    assert result.returncode == 1
    assert "is not in the local Hugging Face cache" in result.stderr


def test_pull_refuses_a_tampered_cache(tmp_path):
    env, pub = signed_cache(tmp_path, tamper=True)
    result = pull(env, pub, tmp_path / "d")
    assert result.returncode == 1 and "'a.txt' has changed since it was signed" in result.stderr


def test_bad_repo_id_is_a_usage_error():
    result = run_gkit("pull", "not a repo")
    assert result.returncode == 2 and "is not a Hub repository id" in result.stderr


def test_loader_mode_verifies_before_the_ready_marker_and_skips_once_loaded(tmp_path):
    """What the chart's loader initContainer runs into a new claim: pull beside the model,
    verify, move into place, then write the marker; a later start finds the marker and
    downloads nothing (the cache is gone), and the pod's verify step still checks it."""
    env, pub = signed_cache(tmp_path)
    volume = tmp_path / "claim"
    dest, marker = volume / "model", volume / ".gkit-ready"
    first = pull(env, pub, dest, "--revision", COMMIT, "--ready-marker", str(marker), "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    out = json.loads(first.stdout)
    assert out["dest"] == str(dest.resolve()) and "skipped" not in out
    written = json.loads(marker.read_text())
    assert written == {
        "repo_id": "acme/granite-demo",
        "commit": COMMIT,
        "manifest_digest": out["verification"]["manifest_digest"],
    }
    assert sorted(p.name for p in volume.iterdir()) == [".gkit-ready", "model"]  # no staging
    shutil.rmtree(tmp_path / "hf")
    # anyone who can write the claim can write the marker: what it adds is never echoed
    marker.write_text(json.dumps({**written, "verified_by": "admin", "dest": "/etc"}))
    again = pull(env, pub, dest, "--revision", COMMIT, "--ready-marker", str(marker), "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    skipped = json.loads(again.stdout)
    assert skipped == {"ok": True, **written, "dest": str(dest.resolve()), "skipped": True}
    # nor is a "digest" that is not one (an object, a string of markup)
    marker.write_text(json.dumps({**written, "manifest_digest": {"<b>": "x" * 1000}}))
    forged = pull(env, pub, dest, "--revision", COMMIT, "--ready-marker", str(marker), "--json")
    assert forged.returncode == 0 and json.loads(forged.stdout)["manifest_digest"] is None
    assert run_gkit("verify", str(dest), "--public-key", str(pub)).returncode == 0


def test_loader_mode_writes_no_marker_for_a_model_that_fails_verification(tmp_path):
    env, pub = signed_cache(tmp_path, tamper=True)
    volume = tmp_path / "claim"
    marker = volume / ".gkit-ready"
    result = pull(env, pub, volume / "model", "--revision", COMMIT, "--ready-marker", str(marker))
    assert result.returncode == 1 and "'a.txt' has changed since it was signed" in result.stderr
    assert not marker.exists() and not (volume / "model").exists()
