"""A real Docker engine and a local base image for the container tests.

The engine: the one DOCKER_HOST or /var/run/docker.sock names if it answers; otherwise a
dockerd this module starts (root only) with `--bridge=none --iptables=false
--ip6tables=false` (REFERENCE.md 6: the default bridge network's address range must never
be used here) on its own socket and data root, left running for later tests and sessions.
The base image: Debian bookworm from debootstrap with python3, python3-venv and libatomic1,
imported as local/debian-python:bookworm; no registry is ever asked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

SOCKET_DIR = Path("/run/gkit-test-docker")
SOCKET = SOCKET_DIR / "docker.sock"
DATA_ROOT = Path("/var/lib/gkit-test-docker")
BASE_IMAGE = "local/debian-python:bookworm"
MIRROR = "http://deb.debian.org/debian"
# never the default bridge: its address range must not be used on these machines
DOCKERD = ["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false"]


def _answers(host: str) -> bool:
    import docker

    try:
        docker.DockerClient(base_url=host, timeout=5).ping()
        return True
    except Exception:  # any failure means: not this one
        return False


def engine_host() -> str | None:
    """unix://... of a running engine, starting one if we may; None if there can be none."""
    for host in (os.environ.get("DOCKER_HOST"), "unix:///var/run/docker.sock", f"unix://{SOCKET}"):
        if host and _answers(host):
            return host
    if os.geteuid() != 0 or not shutil.which(DOCKERD[0]):
        return None
    SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    with open(SOCKET_DIR / "engine.log", "ab") as log:  # the engine keeps its own descriptor
        subprocess.Popen(
            [
                *DOCKERD,  # dockerd --bridge=none --iptables=false --ip6tables=false
                f"--host=unix://{SOCKET}",
                f"--data-root={DATA_ROOT}",
                f"--exec-root={SOCKET_DIR / 'exec'}",
                f"--pidfile={SOCKET_DIR / 'docker.pid'}",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    for _ in range(120):
        if _answers(f"unix://{SOCKET}"):
            return f"unix://{SOCKET}"
        time.sleep(0.5)
    raise RuntimeError(f"the Docker engine did not start; see {SOCKET_DIR / 'engine.log'}")


def ensure_base_image(host: str) -> str:
    import docker

    client = docker.DockerClient(base_url=host, timeout=600)
    try:
        client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except docker.errors.ImageNotFound:
        pass
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is not installed (scripts/install-system-packages.sh)")
    with tempfile.TemporaryDirectory(prefix="gkit-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,libatomic1",
                "bookworm",
                str(root),
                MIRROR,
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "-H", host, "import", "-", BASE_IMAGE],
            stdin=tar.stdout,
            check=True,
            capture_output=True,
            timeout=600,
        )
        tar.wait()
    return BASE_IMAGE
