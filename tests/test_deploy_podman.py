"""The main job for real on this host: `gkit verify && gkit deploy --target podman` runs the
rendered release (its trust ConfigMap and its Deployment, verify initContainer first) with
the real `podman kube play --network host`, on CPU (`runtime.device` cpu) with the GPU
request still rendered. The pod serves the official openai client; a tampered weight file
stops it at its verify step; `--down` removes it. Key- and certificate-signed models."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests import pki
from tests.conftest import RUNTIME_IMAGE, run_gkit

pytestmark = [pytest.mark.podman, pytest.mark.docker, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _podman(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def deployed(runtime_image, podman_engine, tmp_path):
    """Deploys with the given model and flags; takes every pod it started down afterwards."""
    _, _, _, _, env = runtime_image
    outputs = []

    def deploy(model: Path, *flags: str, port: int | None = None):
        out = tmp_path / f"out-{len(outputs)}"
        outputs.append((model, out))
        port = port or _free_port()
        r = run_gkit(
            "deploy", str(model), "--gpus", "2", "--target", "podman", "--device", "cpu",
            "--port", str(port), "--image", RUNTIME_IMAGE, "--output", str(out), "--json",
            *flags, env=env, timeout=600,
        )  # fmt: skip
        return r, out, port

    yield deploy
    for model, out in outputs:
        if (out / "podman-play.yaml").exists():
            run_gkit("deploy", str(model), "--target", "podman", "--output", str(out), "--down",
                     env=env)  # fmt: skip


def _complete(url: str, model: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", timeout=120, max_retries=0)
    answer = client.completions.create(model=model, prompt="Hello", max_tokens=6, temperature=0)
    assert answer.usage.completion_tokens == 6
    return answer.choices[0].text


def _records(env: dict, event: str) -> list[dict]:
    from granite_ops_kit.audit.store import Query, open_store

    return list(open_store(env["GKIT_AUDIT_DB"]).records(Query(event=event)))


def test_key_signed_model_serves_from_the_pod_then_down_removes_it(runtime_image, deployed):
    model, _, digest, _, env = runtime_image
    r, out, port = deployed(model)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)
    assert result["action"] == "deployed" and result["url"] == f"http://127.0.0.1:{port}/v1"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as health:
        assert json.loads(health.read())["status"] == "ok"
    assert _complete(result["url"], model.name)

    played = list(yaml.safe_load_all((out / "podman-play.yaml").read_text()))
    assert [d["kind"] for d in played] == ["ConfigMap", "Deployment"]
    pod = played[1]["spec"]["template"]["spec"]
    runtime = pod["containers"][0]
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == 2  # the GPU fields stay
    assert runtime["args"][runtime["args"].index("--device") + 1] == "cpu"
    verify = pod["initContainers"][0]
    assert verify["name"] == "verify" and digest in verify["args"]
    assert "/etc/gkit/trust/signer-" in " ".join(verify["args"])  # from the release's ConfigMap

    applied = _records(env, "deployment.applied")[-1]
    assert applied["outcome"] == "success" and applied["details"]["pod"] == result["pod"]
    down = run_gkit("deploy", str(model), "--target", "podman", "--output", str(out), "--down",
                    "--json", env=env)  # fmt: skip
    assert down.returncode == 0, down.stdout + down.stderr
    assert _podman("pod", "exists", result["pod"]).returncode == 1
    assert _records(env, "deployment.removed")[-1]["outcome"] == "success"


def test_the_pods_verify_step_refuses_a_tampered_weight_file(runtime_image, deployed, tmp_path):
    """The gate would refuse the tampered model before podman ran anything, so the release
    rendered for the honest model is played against a tampered copy: the pod's own verify
    step must stop it, and the runtime container must never start."""
    from granite_ops_kit.deploy.podman import play_objects, pod_name

    model, _, _, _, _ = runtime_image
    r, out, port = deployed(model)
    assert r.returncode == 0, r.stdout + r.stderr
    down = run_gkit("deploy", str(model), "--target", "podman", "--output", str(out), "--down")
    assert down.returncode == 0
    tampered = tmp_path / "tampered" / model.name
    shutil.copytree(model, tampered)
    weights = bytearray((tampered / "model.safetensors").read_bytes())
    weights[-100] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(weights))
    objects = play_objects((out / "rendered.yaml").read_text(), tampered)
    play = tmp_path / "tampered.yaml"
    play.write_text(yaml.safe_dump_all(objects))
    try:
        played = _podman("kube", "play", "--network", "host", str(play))
        assert played.returncode != 0
        assert "init container" in played.stderr and "exited with code 1" in played.stderr
        pod = pod_name(objects)
        logs = _podman("logs", f"{pod}-verify").stdout + _podman("logs", f"{pod}-verify").stderr
        assert "'model.safetensors' has changed since it was signed" in logs
        state = _podman("inspect", f"{pod}-runtime", "--format", "{{.State.Status}}")
        assert state.stdout.strip() == "created"  # never started
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        _podman("kube", "down", str(play))


def test_certificate_signed_model_serves_from_the_pod(runtime_image, deployed, tmp_path):
    from tests.test_supply_sign import sign_with_chain

    source, _, digest, _, env = runtime_image
    model = tmp_path / "cert" / source.name
    shutil.copytree(source, model)
    (model / "model.sig").unlink()
    chain = pki.make_pki(tmp_path / "pki")
    sign_with_chain(model, chain)
    v = run_gkit("verify", str(model), "--certificate-chain", str(chain.root), "--identity",
                 "ml-release@example.com", "--json", env=env)  # fmt: skip
    assert v.returncode == 0, v.stdout + v.stderr
    assert json.loads(v.stdout)["manifest_digest"] == digest  # same files, same manifest
    r, out, _ = deployed(model)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)
    assert _complete(result["url"], model.name)
    verify = yaml.safe_load_all((out / "podman-play.yaml").read_text())
    args = next(d for d in verify if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "initContainers"
    ][0]["args"]
    assert "/etc/gkit/trust/certificate-roots.pem" in args
    assert args[args.index("--identity") + 1] == "ml-release@example.com"


def test_a_pod_that_cannot_serve_is_recorded_as_a_failed_deployment(runtime_image, deployed):
    """The runtime's port is taken on the host: the pod's server exits (2) before serving,
    and gkit deploy says so in one sentence and records the failure it observed."""
    model, _, _, _, env = runtime_image
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        r, _, port = deployed(model, port=holder.getsockname()[1])
    assert r.returncode == 1, r.stdout + r.stderr
    message = json.loads(r.stdout)["error"]["message"]
    assert "stopped before serving" in message and "exited (2)" in message, message
    assert "Traceback" not in r.stderr
    failed = _records(env, "deployment.applied")[-1]
    assert failed["outcome"] == "failure" and str(port) in failed["details"]["failure"]
