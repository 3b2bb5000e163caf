"""`--target podman`: the release's own rendered objects run on this host by
`podman kube play --network host`, the way RHEL single-host and edge sites run Kubernetes
YAML. The Deployment is the one `helm template` renders for a cluster; the only change is
where the model volume comes from (the model directory on this host, read-only, instead of
a claim). Objects podman has no use for (Service, NetworkPolicy, PDB, ...) are left out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from granite_ops_kit.deploy.docker_run import answers_health
from granite_ops_kit.deploy.results import PodmanPod, PodRemoved
from granite_ops_kit.errors import CheckFailed, UsageError

PLAY_FILE = "podman-play.yaml"
PLAYED_KINDS = ("ConfigMap", "Secret", "Deployment")


def podman(*args: str, timeout: float = 600, stdin=None) -> subprocess.CompletedProcess:
    exe = shutil.which("podman")
    if exe is None:
        raise CheckFailed("podman is not installed (Debian: apt-get install podman catatonit).")
    result = subprocess.run(
        [exe, *args], capture_output=True, text=stdin is None, timeout=timeout, stdin=stdin
    )
    if result.returncode != 0:
        err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
        raise CheckFailed(f"podman {' '.join(args[:2])} failed: {_last_line(err)}")
    return result


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _model_from_host(pod: dict, model_dir: Path, model_path: str) -> None:
    """The claim becomes a read-only host directory mounted where the model is expected."""
    for volume in pod.get("volumes", []):
        if volume["name"] == "model" and "persistentVolumeClaim" in volume:
            volume.clear()
            volume.update(
                name="model", hostPath={"path": str(model_dir.resolve()), "type": "Directory"}
            )
            break
    else:
        return
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        for mount in container.get("volumeMounts", []):
            if mount["name"] == "model":
                mount.pop("subPath", None)
                mount.update(mountPath=model_path, readOnly=True)


def _on_host_network(pod: dict) -> None:
    """On the host's network a container's ports are already the host's: podman refuses
    port mappings there, so the ports go and the probes name the port by number."""
    for container in pod.get("containers", []):
        numbers = {p.get("name"): p["containerPort"] for p in container.pop("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            check = container.get(probe, {}).get("httpGet")
            if check and isinstance(check.get("port"), str):
                check["port"] = numbers[check["port"]]


def play_objects(rendered: str, model_dir: Path) -> list[dict]:
    """The objects of `helm template` output that podman plays: the model from the host,
    on the host's network."""
    import yaml

    objects = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") in PLAYED_KINDS]
    deployments = [d for d in objects if d["kind"] == "Deployment"]
    if len(deployments) != 1:
        raise CheckFailed(f"the chart rendered {len(deployments)} Deployments, not one.")
    pod = deployments[0]["spec"]["template"]["spec"]
    # Podman 4.3 gives init containers the pod's restart policy: with a Deployment's
    # Always it restarts the verify step as soon as it exits (and then fails to remove it,
    # "cannot remove container ... as it is running"). Never runs each step once; a host
    # service that restarts is podman's systemd/Quadlet integration, not kube play's.
    pod["restartPolicy"] = "Never"
    runtime = next(c for c in pod["containers"] if c["name"] == "runtime")
    model_path = runtime["args"][1]  # gkit serve MODEL_PATH ...
    _model_from_host(pod, model_dir, model_path)
    _on_host_network(pod)
    return objects


def pod_name(objects: list[dict]) -> str:
    deployment = next(d for d in objects if d["kind"] == "Deployment")
    return f"{deployment['metadata']['name']}-pod-0"  # podman names a Deployment's pod so


def ensure_image(image: str) -> str:
    """The image in podman's store: taken from the local Docker engine if need be (no
    registry is asked). Returns where it came from."""
    if (
        subprocess.run([shutil.which("podman") or "podman", "image", "exists", image]).returncode
        == 0
    ):
        return "podman"
    from granite_ops_kit.deploy.image import docker_client

    client = docker_client()
    try:
        found = client.images.get(image)
    except Exception:  # docker.errors.ImageNotFound
        raise UsageError(
            f"image {image} is in neither podman's store nor the Docker engine; build it "
            "with gkit build first."
        ) from None
    with subprocess.Popen(
        [shutil.which("podman") or "podman", "load", "--quiet"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as load:
        for chunk in found.save(named=True):
            load.stdin.write(chunk)
        load.stdin.close()
        err = load.stderr.read().decode(errors="replace")
        if load.wait() != 0:
            raise CheckFailed(f"podman load of {image} failed: {_last_line(err)}")
    return "docker"


def play(output: Path, rendered: str, model_dir: Path, image: str, port: int, log) -> PodmanPod:
    import yaml

    objects = play_objects(rendered, model_dir)
    play_file = output / PLAY_FILE
    play_file.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    source = ensure_image(image)
    log(f"podman kube play --network host {play_file} (image from {source})")
    pod = pod_name(objects)
    start = time.monotonic()
    try:
        podman("kube", "play", "--network", "host", "--replace", str(play_file), timeout=900)
    except CheckFailed as e:
        raise CheckFailed(f"{e.message.rstrip('.')}; {_why_not_serving(pod)}") from None
    seconds = wait_healthy(pod, port)
    return PodmanPod(
        play_file=str(play_file),
        pod=pod,
        url=f"http://127.0.0.1:{port}/v1",
        healthy_after_s=round(time.monotonic() - start, 1),
        ready_after_s=round(seconds, 1),
    )


def _containers(pod: str) -> list[dict]:
    out = subprocess.run(
        [
            shutil.which("podman") or "podman",
            "ps",
            "-a",
            "--filter",
            f"pod={pod}",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout or "[]") if out.returncode == 0 else []


def _why_not_serving(pod: str) -> str:
    """The first container of the pod that exited non-zero, with its last line of output."""
    for c in _containers(pod):
        if c.get("Exited") and c.get("ExitCode"):
            name = c["Names"][0]
            logs = subprocess.run(
                [shutil.which("podman") or "podman", "logs", "--tail", "5", name],
                capture_output=True,
                text=True,
            )
            last = _last_line(logs.stdout + logs.stderr)
            return f"container {name} exited ({c['ExitCode']}): {last}"
    return "no container of the pod reported why"


def wait_healthy(pod: str, port: int, timeout: float = 600) -> float:
    start = time.monotonic()
    runtime = f"{pod}-runtime"
    while time.monotonic() - start < timeout:
        state = {c["Names"][0]: c for c in _containers(pod)}
        if runtime in state and state[runtime].get("Exited"):
            raise CheckFailed(f"the pod {pod} stopped before serving: {_why_not_serving(pod)}")
        if runtime not in state and any(c.get("ExitCode") for c in state.values()):
            raise CheckFailed(f"the pod {pod} never started serving: {_why_not_serving(pod)}")
        if answers_health(port):
            return time.monotonic() - start
        time.sleep(0.5)
    raise CheckFailed(f"the pod {pod} did not answer /health on port {port} within {timeout} s.")


def down(output: Path) -> PodRemoved:
    play_file = output / PLAY_FILE
    if not play_file.is_file():
        raise UsageError(
            f"{play_file} does not exist: --down removes what `gkit deploy --target podman "
            f"--output {output}` started."
        )
    podman("kube", "down", str(play_file), timeout=120)
    return PodRemoved(play_file=str(play_file))
