"""`gkit build` with a real Docker engine (started by the test set-up with --bridge=none),
on a local Debian base: the image runs as non-root, serves the demo model, and its verify
step refuses a model tampered with after verification."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from tests.conftest import RUNTIME_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.slow]
TAG = RUNTIME_IMAGE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def built(runtime_image):
    return runtime_image


def test_image_is_non_root_labelled_and_audited(built):
    from granite_ops_kit.audit.store import Query, open_store

    _, _, digest, result, env = built
    assert result["user"] == "10001:10001"
    assert result["labels"]["dev.gkit.model.manifest-digest"] == digest
    assert result["labels"]["dev.gkit.model.verification"].startswith("verified")
    store = open_store(env["GKIT_AUDIT_DB"])
    built_records = list(store.records(Query(event="image.built")))
    assert built_records[-1]["subject"]["digest"] == result["image_id"]


def _run(model, pub, port, name):
    from granite_ops_kit.deploy import docker_run

    return docker_run.run(
        docker_run.RunRequest(
            TAG,
            model,
            0,
            port=port,
            name=name,
            env={"GKIT_VERIFY_ARGS": "--public-key /trust/signer.pub"},
            mounts={str(pub): "/trust/signer.pub"},
        )
    )


def test_container_serves_the_demo_model_as_non_root(built):
    from granite_ops_kit.deploy import docker_run

    model, pub, _, _, _ = built
    port = _free_port()
    container = _run(model, pub, port, f"gkit-serve-{port}")
    try:
        docker_run.wait_healthy(container, port, timeout=300)
        body = json.dumps(
            {"model": "granite-demo", "prompt": "Hello", "max_tokens": 6, "temperature": 0}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert answer["usage"]["completion_tokens"] == 6
        assert answer["choices"][0]["text"]
        assert container.exec_run("id -u").output.strip() == b"10001"
        denied = container.exec_run("touch /opt/x")
        assert denied.exit_code != 0  # read-only root filesystem
    finally:
        container.remove(force=True)


def test_model_tampered_after_verification_is_refused(built, tmp_path):
    import shutil

    from granite_ops_kit.deploy import docker_run
    from granite_ops_kit.errors import CheckFailed

    model, pub, _, _, _ = built
    tampered = tmp_path / "granite-demo"
    shutil.copytree(model, tampered)
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(data))
    port = _free_port()
    container = _run(tampered, pub, port, f"gkit-tampered-{port}")
    try:
        with pytest.raises(CheckFailed, match="exited \\(1\\) before serving"):
            docker_run.wait_healthy(container, port, timeout=300)
        logs = container.logs().decode()
        assert "'model.safetensors' has changed since it was signed" in logs
        assert "refusing to serve it" in logs
    finally:
        container.remove(force=True)
