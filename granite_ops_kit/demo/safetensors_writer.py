"""A streaming safetensors writer.

Why not `safetensors.numpy.save_file`: numpy has no bfloat16 (Granite's dtype), and the real
shapes (h-small is 64 GB in bf16) must be written a block at a time with flat memory. The
format is small enough to write directly: an 8-byte little-endian header length, a JSON
header (padded with spaces to 8 bytes), then the raw tensors back to back. The header is
written with sorted keys so the same tensors give the same bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

# dtype name -> (safetensors code, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "bfloat16": ("BF16", 2),
    "float16": ("F16", 2),
    "float32": ("F32", 4),
}


@dataclass(frozen=True)
class TensorEntry:
    """A tensor to write: its name, shape, and a source of float32 blocks in row order."""

    name: str
    shape: tuple[int, ...]
    blocks: Callable[[], Iterator[np.ndarray]]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def to_dtype_bytes(block: np.ndarray, dtype: str) -> bytes:
    """Convert a float32 block to the on-disk dtype, rounding bf16 to nearest-even."""
    block = np.ascontiguousarray(block, dtype=np.float32)
    if dtype == "float32":
        return block.astype("<f4", copy=False).tobytes()
    if dtype == "float16":
        return block.astype("<f2").tobytes()
    if dtype == "bfloat16":
        bits = block.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype("<u2").tobytes()
    raise ValueError(f"unsupported dtype {dtype}")


def _header(entries: list[TensorEntry], dtype: str, metadata: dict[str, str]) -> bytes:
    code, size = DTYPES[dtype]
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for entry in entries:
        nbytes = entry.numel * size
        header[entry.name] = {
            "dtype": code,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(
    path: Path,
    entries: Iterable[TensorEntry],
    dtype: str,
    metadata: dict[str, str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Write `entries` (sorted by name) to `path`; returns the bytes of tensor data written."""
    ordered = sorted(entries, key=lambda e: e.name)
    written = 0
    with open(path, "wb") as out:
        out.write(_header(ordered, dtype, metadata or {"format": "pt"}))
        for entry in ordered:
            written += _write_tensor(out, entry, dtype, on_bytes)
    return written


def _write_tensor(
    out: BinaryIO, entry: TensorEntry, dtype: str, on_bytes: Callable[[int], None] | None
) -> int:
    expected = entry.numel
    seen = 0
    for block in entry.blocks():
        data = to_dtype_bytes(block, dtype)
        out.write(data)
        seen += block.size
        if on_bytes:
            on_bytes(len(data))
    if seen != expected:
        raise AssertionError(f"{entry.name}: produced {seen} elements, expected {expected}")
    return expected * DTYPES[dtype][1]
