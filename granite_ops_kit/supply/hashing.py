"""Digests of model files and shards: streamed, parallel, flat in memory.

Files are hashed through read-only memory maps of 16 MiB windows: no copy from the page
cache (measured 2.77 GB/s on 2 cores against 2.3 GB/s for `readinto` into a buffer), and
resident memory stays at workers x window whatever the model size. hashlib and blake3
release the GIL on large updates, so threads hash on every core. Names match the
reference signer's: `sha256`, `blake2b`, `blake3`, and `<hash>-sharded-<shard_size>`.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from granite_ops_kit.errors import UsageError, VerificationFailed
from granite_ops_kit.supply.model_files import ModelFile, sort_key

WINDOW_BYTES = 16 << 20
HASH_TYPES = ("sha256", "blake2b", "blake3")
DEFAULT_SHARD_SIZE = 1_000_000_000


def canonical_hash_type(name: str) -> str:
    name = {"blake2": "blake2b"}.get(name, name)
    if name not in HASH_TYPES:
        raise UsageError(f"hash '{name}' is not one of {', '.join(HASH_TYPES)}.")
    return name


def _new_hasher(hash_type: str):
    if hash_type == "sha256":
        return hashlib.sha256()
    if hash_type == "blake2b":
        return hashlib.blake2b()
    import blake3

    return blake3.blake3(max_threads=blake3.blake3.AUTO)


@dataclass(frozen=True)
class Piece:
    """One unit of hashing: a whole file (files method) or a byte range (shards method)."""

    name: str  # resource name: "path" or "path:start:end"
    file: str  # the file's resource name
    path: Path
    start: int
    end: int


def count_pieces(files: list[ModelFile], method: str, shard_size: int) -> int:
    """How many pieces `pieces` would make, computed without making them."""
    if method == "files":
        return len(files)
    if shard_size <= 0:
        raise UsageError(f"shard size {shard_size} must be positive.")
    return sum(-(-f.size // shard_size) for f in files)


def pieces(files: list[ModelFile], method: str, shard_size: int = DEFAULT_SHARD_SIZE):
    if method == "files":
        return [Piece(f.name, f.name, f.path, 0, f.size) for f in files]
    if method != "shards":
        raise UsageError(f"serialization method '{method}' is not 'files' or 'shards'.")
    if shard_size <= 0:
        raise UsageError(f"shard size {shard_size} must be positive.")
    out = []
    for f in files:  # an empty file has no shard (as in the reference)
        for start in range(0, f.size, shard_size):
            end = min(start + shard_size, f.size)
            out.append(Piece(f"{f.name}:{start}:{end}", f.name, f.path, start, end))
    return out


def algorithm_name(hash_type: str, method: str, shard_size: int) -> str:
    return f"{hash_type}-sharded-{shard_size}" if method == "shards" else hash_type


def _hash_piece(piece: Piece, hash_type: str, advance) -> str:
    hasher = _new_hasher(hash_type)
    # Listed as a regular file, but it may have been swapped since: never block on a FIFO
    # or stream a device.
    fd = os.open(piece.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VerificationFailed(f"{piece.file} became something other than a regular file.")
        for off in range(piece.start, piece.end, WINDOW_BYTES):
            n = min(WINDOW_BYTES, piece.end - off)
            # A map past the end of a file that shrank would fault (SIGBUS): check first. A
            # file that changes while hashed gives a digest that does not match, as it should.
            if os.fstat(fd).st_size < off + n:
                hasher.update(b"file shrank while hashing")
                break
            base = off - off % mmap.ALLOCATIONGRANULARITY
            with (
                mmap.mmap(fd, off - base + n, prot=mmap.PROT_READ, offset=base) as window,
                memoryview(window) as view,
            ):
                hasher.update(view[off - base :])
            advance(n)
    return hasher.hexdigest()


def hash_pieces(
    items: list[Piece],
    hash_type: str,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """Digest (hex) of every piece, keyed by resource name, in OMS resource order."""
    workers = workers or os.cpu_count() or 1
    advance = progress or (lambda n: None)
    # largest first, so one big file does not start last and leave the other cores idle
    ordered = sorted(items, key=lambda p: p.end - p.start, reverse=True)
    if workers == 1 or len(items) <= 1:
        digests = {p.name: _hash_piece(p, hash_type, advance) for p in ordered}
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(lambda p: _hash_piece(p, hash_type, advance), ordered)
            digests = dict(zip((p.name for p in ordered), results, strict=True))
    in_order = sorted(items, key=lambda p: (sort_key(p.file), p.start, p.end))
    return {p.name: digests[p.name] for p in in_order}
