"""Shared fixtures and the marker rules.

- `gpu` tests run only where torch sees CUDA (the device machine); CI on CPU skips them.
- `slow` tests run everywhere; the marker lets a developer deselect them with -m "not slow".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GKIT = [sys.executable, "-m", "granite_ops_kit"]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (runs on the device machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def run_gkit(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run(
        [*GKIT, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def tiny_hybrid(tmp_path_factory) -> Path:
    from granite_ops_kit.demo.checkpoint import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("models") / "tiny-hybrid", "tiny-hybrid").path


@pytest.fixture(scope="session")
def tiny_dense(tmp_path_factory) -> Path:
    from granite_ops_kit.demo.checkpoint import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("models") / "tiny-dense", "tiny-dense").path


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    from tests.postgres_server import PostgresServer

    server = PostgresServer(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request, tmp_path) -> str:
    """A fresh, empty audit database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(autouse=True)
def _private_audit_log(tmp_path_factory, monkeypatch):
    """Every test (and every gkit it runs) writes audit events to its own database, never to
    the developer's."""
    db = tmp_path_factory.mktemp("audit") / "audit.db"
    monkeypatch.setenv("GKIT_AUDIT_DB", f"sqlite:///{db}")
    # the default audit signing key lives in the data directory: a private one per test
    monkeypatch.setenv("XDG_DATA_HOME", str(db.parent / "data"))
    return db


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    """The real helm: installed by `make` (scripts/get_helm.py), or fetched now the same way."""
    from granite_ops_kit.deploy.helm import find_helm

    found = find_helm()
    if found is None:
        subprocess.run([sys.executable, str(REPO / "scripts" / "get_helm.py")], check=True)
        found = find_helm()
    assert found is not None
    return found


@pytest.fixture(scope="session")
def docker_host() -> str:
    """A real Docker engine (started here if need be, never with the default bridge)."""
    from tests.docker_engine import engine_host

    host = engine_host()
    if host is None:
        pytest.fail(
            "no Docker engine answers and this user cannot start one: run the tests as root "
            "(scripts/install-system-packages.sh installs docker.io) or set DOCKER_HOST"
        )
    os.environ["DOCKER_HOST"] = host  # for the gkit subprocesses too
    return host


RUNTIME_IMAGE = "gkit-test/runtime:dev"


@pytest.fixture(scope="session")
def runtime_image(docker_host, tmp_path_factory):
    """One `gkit build` of the runtime image on the local Debian base, for a key-signed and
    verified demo model; shared by the docker and podman tests (a build takes minutes).
    Yields (model, public key, manifest digest, build result, env with its audit log)."""
    import json

    import docker

    from tests import pki
    from tests.docker_engine import ensure_base_image

    base = ensure_base_image(docker_host)
    d = tmp_path_factory.mktemp("image")
    model = d / "granite-demo"
    assert run_gkit("demo-model", str(model)).returncode == 0
    key = pki.new_key()
    priv, pub = pki.write_key(key, d / "k.pem"), pki.write_public(key, d / "k.pub")
    env = {
        "GKIT_AUDIT_DB": f"sqlite:///{d / 'audit.db'}",
        "XDG_DATA_HOME": str(d / "data"),
        "DOCKER_HOST": docker_host,
    }
    assert run_gkit("sign", str(model), "--key", str(priv), env=env).returncode == 0
    verified = run_gkit("verify", str(model), "--public-key", str(pub), "--json", env=env)
    digest = json.loads(verified.stdout)["manifest_digest"]
    r = run_gkit(
        "build",
        str(model),
        "--accelerator",
        "cpu",
        "--base-image",
        base,
        "--tag",
        RUNTIME_IMAGE,
        "--json",
        env=env,
        timeout=1200,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)
    yield model, pub, digest, result, env
    docker.DockerClient(base_url=docker_host).images.remove(result["image_id"], force=True)


@pytest.fixture(scope="session")
def podman_engine(tmp_path_factory) -> Path:
    """The real podman (scripts/install-system-packages.sh installs it), configured as
    REFERENCE.md 6 measured: runc and explicit ulimits, from a file of the tests' own
    (CONTAINERS_CONF), so the system's configuration is left alone."""
    import shutil

    if not shutil.which("podman"):
        pytest.fail("podman is not installed: run scripts/install-system-packages.sh as root")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    os.environ["CONTAINERS_CONF"] = str(conf)  # for the gkit subprocesses too
    return conf
