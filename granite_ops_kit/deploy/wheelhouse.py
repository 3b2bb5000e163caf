"""The wheels an image installs from: gkit and every dependency, built on the host, pinned
to the host's versions (what the tests ran against), so the image build needs no network
(air-gapped users need exactly this)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from granite_ops_kit import __version__
from granite_ops_kit.errors import CheckFailed

PROJECT = "granite-ops-kit"


def source_tree() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() else None


def host_pins() -> list[str]:
    """name==version of everything installed here, but gkit itself and local builds."""
    pins = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if not name or name == PROJECT:
            continue
        pins[name] = f"{name}=={dist.version}"
    return sorted(pins.values())


def build(dest: Path, log=print) -> Path:
    """Fill `dest` with wheels for granite-ops-kit[runtime]; reuses pip's cache."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = host_pins()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(pins) + "\n")
        constraints = f.name
    src = source_tree()
    target = f"{src}[runtime]" if src else f"{PROJECT}[runtime]=={__version__}"
    log(
        f"building wheels for {PROJECT}[runtime] {__version__} ({len(pins)} pinned "
        f"dependencies) into {dest}"
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
        constraints,
        target,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    Path(constraints).unlink(missing_ok=True)
    if result.returncode != 0:
        tail = " ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise CheckFailed(f"building the wheelhouse failed: {tail}")
    return dest


def fingerprint(wheels: Path) -> str:
    h = hashlib.sha256()
    for w in sorted(wheels.glob("*.whl")):
        h.update(w.name.encode())
    return h.hexdigest()[:16]
