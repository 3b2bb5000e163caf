"""`gkit build --accelerator`: a cuda image takes torch from its base and checks at build time
that it was built for CUDA; a torch the base already holds is reused, never reinstalled.
Real Docker builds on local bases (no registry): Debian with python3, and the same with
the CPU torch 2.13.0 installed in its own environment."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import pki
from tests.conftest import run_gkit

pytestmark = [pytest.mark.docker, pytest.mark.slow]
TORCH_BASE = "local/debian-python-torch:bookworm"
TAG = "gkit-test/runtime-on-torch:dev"


def _torch_base(client, base: str) -> str:
    """Debian's python3 with torch 2.13.0 (CPU) in its own site-packages, as PyTorch's images
    hold torch in their interpreter's (a venv's packages would not be seen by another)."""
    try:
        client.images.get(TORCH_BASE)
        return TORCH_BASE
    except Exception:  # docker.errors.ImageNotFound
        pass
    with tempfile.TemporaryDirectory(prefix="gkit-torch-base-") as tmp:
        ctx = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "torch==2.13.0", "-w", ctx / "w"],
            check=True,
        )
        (ctx / "Dockerfile").write_text(
            f"FROM {base}\n"
            "COPY w/ /tmp/w/\n"
            "RUN python3 -m venv /tmp/pip && /tmp/pip/bin/pip install --no-index --no-cache-dir "
            "--find-links /tmp/w --target /usr/local/lib/python3.11/dist-packages torch==2.13.0 "
            "&& rm -rf /tmp/w /tmp/pip\n"
        )
        client.images.build(path=tmp, tag=TORCH_BASE, network_mode="none", pull=False, rm=True)
    return TORCH_BASE


@pytest.fixture(scope="module")
def setup(docker_host, tmp_path_factory):
    import docker

    from granite_ops_kit.deploy import wheelhouse
    from tests.docker_engine import ensure_base_image

    client = docker.DockerClient(base_url=docker_host, timeout=1200)
    plain = ensure_base_image(docker_host)
    torch_base = _torch_base(client, plain)
    d = tmp_path_factory.mktemp("build")
    model = d / "granite-demo"
    assert run_gkit("demo-model", str(model)).returncode == 0
    key = pki.new_key()
    priv, pub = pki.write_key(key, d / "k.pem"), pki.write_public(key, d / "k.pub")
    env = {"GKIT_AUDIT_DB": f"sqlite:///{d / 'audit.db'}", "XDG_DATA_HOME": str(d / "data")}
    assert run_gkit("sign", str(model), "--key", str(priv), env=env).returncode == 0
    assert run_gkit("verify", str(model), "--public-key", str(pub), env=env).returncode == 0
    wheels = wheelhouse.build(d / "wheels", log=lambda _: None)  # once for every build here
    yield client, plain, torch_base, model, wheels, env
    with contextlib.suppress(Exception):  # never built (a failed test)
        client.images.remove(TAG, force=True)


def _build(setup, *args: str):
    _, _, _, model, wheels, env = setup
    return run_gkit(
        "build", str(model), "--wheelhouse", str(wheels), "--tag", TAG, "--json", *args,
        env=env, timeout=1200,
    )  # fmt: skip


def test_cuda_build_refuses_a_base_whose_torch_has_no_cuda(setup):
    r = _build(setup, "--accelerator", "cuda", "--base-image", setup[2])
    assert r.returncode == 1, r.stdout + r.stderr
    message = json.loads(r.stdout)["error"]["message"]
    assert message == (
        f"the torch in base image {TORCH_BASE} has no CUDA support (torch.version.cuda is "
        "not set): use a PyTorch CUDA runtime image, or --accelerator cpu."
    )


def test_cuda_build_refuses_a_base_without_torch(setup):
    r = _build(setup, "--accelerator", "cuda", "--base-image", setup[1])
    assert r.returncode == 1, r.stdout + r.stderr
    assert (
        "has no torch: a cuda image reuses the base's torch"
        in json.loads(r.stdout)["error"]["message"]
    )


def test_a_torch_the_base_holds_is_reused_not_reinstalled(setup):
    client = setup[0]
    r = _build(setup, "--accelerator", "cpu", "--base-image", setup[2])
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)
    assert result["accelerator"] == "cpu" and result["labels"]["dev.gkit.accelerator"] == "cpu"
    probe = (
        "import pathlib, torch, granite_runtime; print(torch.__file__); "
        "print(any(pathlib.Path('/opt/gkit/venv/lib').glob('python3*/site-packages/torch')))"
    )
    out = client.containers.run(
        TAG, ["-c", probe], entrypoint="/opt/gkit/venv/bin/python", remove=True,
        network_mode="none",
    ).decode().split()  # fmt: skip
    assert out[0] == "/usr/local/lib/python3.11/dist-packages/torch/__init__.py"
    assert out[1] == "False"  # no second torch in gkit's environment


def test_an_unknown_accelerator_is_a_usage_error(setup):
    r = _build(setup, "--accelerator", "rocm")
    assert r.returncode == 2 and "--accelerator must be cuda or cpu" in r.stdout  # --json
