"""The real `helm` binary: found on PATH, beside this Python (scripts/get_helm.py puts it in
.venv/bin), or at $GKIT_HELM; run with errors turned into one sentence."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from granite_ops_kit.errors import CheckFailed, UsageError


def find_helm() -> Path | None:
    for candidate in (
        os.environ.get("GKIT_HELM"),
        shutil.which("helm"),
        str(Path(sys.executable).parent / "helm"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def helm(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    binary = find_helm()
    if binary is None:
        raise UsageError(
            "helm is not installed: put it on PATH or set GKIT_HELM "
            "(python scripts/get_helm.py installs it beside this Python)."
        )
    result = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise CheckFailed(f"helm {args[0]} failed: {' '.join(detail[-3:])}")
    return result
