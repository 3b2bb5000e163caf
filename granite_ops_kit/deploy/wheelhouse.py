"""The wheels an image installs from: gkit and every dependency, built on the host, pinned
to the host's versions (what the tests ran against), so the image build needs no network
(air-gapped users need exactly this)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from granite_ops_kit import __version__
from granite_ops_kit.errors import CheckFailed

PROJECT = "granite-ops-kit"


SOURCE_PARTS = (
    "pyproject.toml",
    "README.md",
    "granite_ops_kit",
    "runtime",
    "policies",
    "manifests",
)


def source_tree() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() else None


def _copy_source(root: Path, dest: Path) -> Path:
    """A clean copy to build from: setuptools writes build/ and *.egg-info into the tree it
    builds, and an egg-info in a checkout shadows the installed package's metadata."""
    dest.mkdir(parents=True)
    for part in SOURCE_PARTS:
        src = root / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / part)
    return dest


def host_pins() -> list[str]:
    """name==version of everything installed here but gkit itself: the image gets what the
    tests ran against, and pip finds it all in its cache."""
    pins = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name and name != PROJECT:
            pins[name] = f"{name}=={dist.version}"
    return sorted(pins.values())


def build(dest: Path, log=print) -> Path:
    """Fill `dest` with wheels for granite-ops-kit[runtime] and its dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = host_pins()
    src = source_tree()
    log(
        f"building wheels for {PROJECT}[runtime] {__version__} ({len(pins)} pinned "
        f"dependencies) into {dest}"
    )
    with tempfile.TemporaryDirectory(prefix="gkit-src-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        target = (
            f"{_copy_source(src, Path(tmp) / 'src')}[runtime]"
            if src
            else f"{PROJECT}[runtime]=={__version__}"
        )
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(dest),
            "--constraint",
            str(constraints),
            target,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = " ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise CheckFailed(f"building the wheelhouse failed: {tail}")
    return dest


# What a CUDA base image supplies, built for its CUDA: torch, triton and NVIDIA's libraries.
BASE_SUPPLIED = ("torch-", "triton-", "nvidia_", "nvidia-")


def drop_base_supplied(wheels: Path, log=print) -> list[str]:
    """Leave the base's own torch in charge: without these wheels pip cannot replace it,
    and the host's (maybe CPU-only) torch never enters a CUDA image."""
    dropped = sorted(
        w.name for w in wheels.glob("*.whl") if w.name.lower().startswith(BASE_SUPPLIED)
    )
    for name in dropped:
        (wheels / name).unlink()
    if dropped:
        log(f"left out {len(dropped)} wheel(s) the CUDA base supplies: {', '.join(dropped)}")
    return dropped


def fingerprint(wheels: Path) -> str:
    h = hashlib.sha256()
    for w in sorted(wheels.glob("*.whl")):
        h.update(w.name.encode())
    return h.hexdigest()[:16]
