"""What a model's files are now, hashed as a signature says they were: the one place sign,
verify (and with it the deploy gate) list a model's files and hash them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from granite_ops_kit.supply import hashing, model_files
from granite_ops_kit.supply.model_files import ModelFile

Progress = Callable[[int, int], Callable[[int], None] | None]


@dataclass(frozen=True)
class Measured:
    """The model's resources as they are: name -> digest under one algorithm."""

    files: list[ModelFile]
    algorithm: str  # e.g. sha256, or the sharded form naming its shard size
    digests: dict[str, str]
    bytes: int

    def resources(self) -> dict[str, tuple[str, str]]:
        """name -> (algorithm, digest), as a signed statement lists them."""
        return {name: (self.algorithm, d) for name, d in self.digests.items()}


def list_model(model_path: Path, ignore_paths: list[str], allow_symlinks: bool) -> list[ModelFile]:
    """The files to hash, before any is read (a policy may refuse the model on them alone)."""
    return model_files.list_files(model_path, ignore_paths, allow_symlinks=allow_symlinks)


def measure(
    files: list[ModelFile],
    *,
    method: str,
    hash_type: str,
    shard_size: int,
    progress: Progress | None = None,
    check_pieces: Callable[[int], None] | None = None,
) -> Measured:
    """Hash `files` by `method` (files, or shards of shard_size). `check_pieces(count)` may
    refuse the piece count before a piece is made (a forged shard size would make millions)."""
    if check_pieces is not None:
        check_pieces(hashing.count_pieces(files, method, shard_size))
    pieces = hashing.pieces(files, method, shard_size)
    total = sum(p.end - p.start for p in pieces)
    advance = progress(total, len(pieces)) if progress else None
    digests = hashing.hash_pieces(pieces, hash_type, progress=advance)
    return Measured(files, hashing.algorithm_name(hash_type, method, shard_size), digests, total)
