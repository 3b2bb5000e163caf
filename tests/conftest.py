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
