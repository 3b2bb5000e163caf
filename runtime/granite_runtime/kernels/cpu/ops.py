"""CPU decode kernels (csrc/cpu_decode.c): built on first use with the system's C compiler,
cached, loaded with ctypes.

What they are for and what they measured: bench/NOTES.md (CPU runtime). Where there is no C
compiler or OpenMP (a slim container image), or GKIT_CPU_KERNELS=0, `available()` is False
and the runtime keeps its PyTorch path (oneDNN packed linears), which computes the same
thing more slowly.

Every entry point takes fp32, C-contiguous CPU tensors; callers check with `accepts()`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "cpu_decode.c"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_lib: ctypes.CDLL | None = None
_tried = False
_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float


class MambaShape(ctypes.Structure):
    """gk_mamba_shape in cpu_decode.c, field for field."""

    _fields_ = [
        (name, _I) for name in ("batch", "inner", "conv_dim", "K", "heads", "P", "groups", "N")
    ] + [(name, _F) for name in ("dt_min", "dt_max", "eps")]


def _cache_dir() -> Path:
    base = os.environ.get("GKIT_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "granite-runtime"
    )
    return Path(base)


def _cpu_key() -> str:
    """What -march=native depends on: a cached build must not move to another CPU model."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _build(cc: str) -> Path:
    """Compile once per (source, flags, CPU); write to a temp name, then rename."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + _cpu_key().encode())
    target = _cache_dir() / f"cpu_decode-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _declare(lib: ctypes.CDLL) -> None:
    lib.gk_linear.argtypes = [_P, _P, _P, _P, _I, _I, _I]
    lib.gk_linear.restype = None
    lib.gk_add_rms_norm.argtypes = [_P, _P, _F, _P, _F, _P, _I, _I]
    lib.gk_add_rms_norm.restype = None
    lib.gk_mamba_step.argtypes = [ctypes.POINTER(MambaShape)] + [_P] * 12
    lib.gk_mamba_step.restype = None


def load() -> ctypes.CDLL | None:
    """The kernel library, or None where it cannot be built here (then say nothing: the
    PyTorch path is a complete fallback)."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if os.environ.get("GKIT_CPU_KERNELS", "1") == "0" or cc is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
        _declare(lib)
    except (OSError, subprocess.SubprocessError):
        return None
    _lib = lib
    return _lib


def available() -> bool:
    return load() is not None


def accepts(*tensors: torch.Tensor) -> bool:
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors
    )


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) @ weight (out, in)^T + bias, for a few rows of x (decode)."""
    out_features, in_features = weight.shape
    y = torch.empty(*x.shape[:-1], out_features)
    rows = x.numel() // in_features
    _lib.gk_linear(_ptr(x), _ptr(weight), _ptr(bias), _ptr(y), rows, out_features, in_features)
    return y


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, alpha: float, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """With delta: x += alpha * delta in place. Returns weight * rms_norm(x)."""
    h = torch.empty_like(x)
    dim = x.shape[-1]
    _lib.gk_add_rms_norm(
        _ptr(x), _ptr(delta), alpha, _ptr(weight), eps, _ptr(h), x.numel() // dim, dim
    )
    return h


def mamba_step(
    shape: MambaShape,
    proj: torch.Tensor,
    conv: torch.Tensor,
    ssm: torch.Tensor,
    slots: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """One Mamba-2 decode step for shape.batch rows; conv and ssm are the layer's pools,
    updated in place at `slots`. weights: conv weight (C, K), conv bias or None, A, D,
    dt_bias, gated-norm weight. Returns the gated-normed y (batch, inner)."""
    xbc = torch.empty(shape.batch, shape.conv_dim)
    y = torch.empty(shape.batch, shape.inner)
    _lib.gk_mamba_step(
        ctypes.byref(shape),
        _ptr(proj),
        _ptr(conv),
        _ptr(ssm),
        _ptr(slots),
        *(_ptr(w) for w in weights),
        _ptr(xbc),
        _ptr(y),
    )
    return y
