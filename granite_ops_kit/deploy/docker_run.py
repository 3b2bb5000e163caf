"""`--target docker`: run the image on this host, locked down as the chart runs it (non-root,
read-only root filesystem, no capabilities, tmpfs for HOME and /tmp, shm for tensor
parallelism), with the model mounted read-only, and wait for /health."""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from granite_ops_kit.errors import CheckFailed

GIB = 1 << 30


@dataclass
class RunRequest:
    image: str
    model_path: Path | None  # None: the model is baked into the image
    gpus: int
    port: int = 8000
    name: str = "gkit-runtime"
    env: dict = field(default_factory=dict)
    mounts: dict = field(default_factory=dict)  # host path -> container path (read-only)
    serve_args: list[str] = field(default_factory=list)
    network: str = "host"


def _volumes(req: RunRequest) -> dict:
    vols = {str(Path(h).resolve()): {"bind": c, "mode": "ro"} for h, c in req.mounts.items()}
    if req.model_path is not None:
        vols[str(req.model_path.resolve())] = {"bind": "/models/model", "mode": "ro"}
    return vols


def run(req: RunRequest):
    from docker.types import DeviceRequest

    from granite_ops_kit.deploy.image import docker_client

    client = docker_client()
    env = {"GKIT_PORT": str(req.port), **req.env}
    if req.model_path is not None:
        env["GKIT_MODEL"] = "/models/model"
    args = [
        *req.serve_args,
        *(["--gpus", str(req.gpus), "--device", "cuda"] if req.gpus else ["--device", "cpu"]),
    ]
    if req.model_path is not None and "--served-model-name" not in args:
        args += ["--served-model-name", req.model_path.resolve().name]  # not "model"
    return client.containers.run(
        req.image,
        command=args,
        name=req.name,
        detach=True,
        environment=env,
        volumes=_volumes(req),
        network_mode=req.network,
        user="10001:10001",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        tmpfs={"/tmp": "rw,size=512m", "/home/gkit": "rw,size=1g,uid=10001,gid=10001"},
        shm_size=f"{max(1, 2 * req.gpus)}g" if req.gpus > 1 else None,
        device_requests=[DeviceRequest(count=req.gpus, capabilities=[["gpu"]])]
        if req.gpus
        else None,
    )


def answers_health(port: int) -> bool:
    """Whether a runtime on this host's port answers /health (podman's pods use it too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait_healthy(container, port: int, timeout: float = 600) -> float:
    """Seconds until /health answered; CheckFailed with the container's last words if it
    exits first (e.g. its verify step refused the model)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        container.reload()
        if container.status in ("exited", "dead"):
            logs = container.logs(tail=5).decode(errors="replace").strip()
            code = container.attrs["State"].get("ExitCode")
            raise CheckFailed(
                f"container {container.name} exited ({code}) before serving: "
                f"{logs.splitlines()[-1] if logs else 'no output'}"
            )
        if answers_health(port):
            return time.monotonic() - start
        time.sleep(0.5)
    raise CheckFailed(f"container {container.name} did not answer /health within {timeout} s.")
