"""What a model is made of: the files under a model path, in the order OMS signs them.

Security lives here: a symlink is refused unless the caller allows symlinks, and even then
one that resolves outside the model directory is always refused; nothing is followed out.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from granite_ops_kit.errors import UsageError, VerificationFailed

# The reference signer always leaves these out (hashing.Config(ignore_git_paths=True)).
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass(frozen=True)
class ModelFile:
    name: str  # the resource name: POSIX path relative to the model root ("." for a file)
    path: Path
    size: int
    is_symlink: bool = False


def sort_key(name: str) -> tuple[str, ...]:
    """OMS order: component by component (`a/b` < `a-b/x` < `a.txt`), as PurePosixPath sorts."""
    return PurePosixPath(name).parts


def _ignored(rel: PurePosixPath, ignore: frozenset[PurePosixPath]) -> bool:
    return any(rel == p or p in rel.parents for p in ignore)


def normalise_ignores(root: Path, paths: list[str] | tuple[str, ...]) -> frozenset[PurePosixPath]:
    """Ignore paths relative to the model root; absolute ones inside it are made relative."""
    out = set()
    for p in paths:
        pp = Path(p)
        if pp.is_absolute():
            try:
                pp = pp.resolve().relative_to(root.resolve())
            except ValueError:
                continue  # outside the model: cannot affect it
        rel = PurePosixPath(os.path.normpath(pp.as_posix()))
        if rel.parts and rel.parts[0] == "..":
            continue
        out.add(rel)
    return frozenset(out)


def signature_ignore(model_path: Path, signature: Path) -> list[str]:
    """The signature file's path inside the model directory, so it never signs itself."""
    if not model_path.is_dir():
        return []
    try:
        return [signature.resolve().relative_to(model_path.resolve()).as_posix()]
    except ValueError:
        return []


def _check_link(root: Path, path: Path, allow_symlinks: bool) -> None:
    rel = path.relative_to(root).as_posix()
    if not allow_symlinks:
        raise VerificationFailed(
            f"{rel} in {root} is a symbolic link; the policy does not allow symlinks "
            "(a link can swap what is served after it is verified)."
        )
    target = path.resolve()
    if not target.is_relative_to(root.resolve()):
        raise VerificationFailed(
            f"{rel} in {root} is a symbolic link to {target}, outside the model directory; "
            "gkit never follows links out of a model."
        )


def list_files(
    model_path: Path,
    ignore_paths: list[str] | tuple[str, ...] = (),
    allow_symlinks: bool = False,
) -> list[ModelFile]:
    """Every regular file of the model (or the single file), sorted in OMS resource order."""
    if not model_path.exists() and not model_path.is_symlink():
        raise UsageError(f"{model_path} does not exist.")
    if model_path.is_file() and not model_path.is_symlink():
        return [ModelFile(".", model_path, model_path.stat().st_size)]
    if not model_path.is_dir():
        raise UsageError(f"{model_path} is neither a model directory nor a model file.")
    root = model_path
    ignore = normalise_ignores(root, ignore_paths) | {PurePosixPath(p) for p in GIT_PATHS}
    found: list[ModelFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in list(dirnames):
            sub = here / name
            rel = PurePosixPath(sub.relative_to(root).as_posix())
            if _ignored(rel, ignore):
                dirnames.remove(name)
            elif sub.is_symlink():
                _check_link(root, sub, allow_symlinks)
                dirnames.remove(name)  # contents are listed through their real location
        for name in filenames:
            path = here / name
            rel = PurePosixPath(path.relative_to(root).as_posix())
            if _ignored(rel, ignore):
                continue
            st = path.lstat()
            link = stat.S_ISLNK(st.st_mode)
            if link:
                _check_link(root, path, allow_symlinks)
                st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                raise VerificationFailed(f"{rel} in {root} is not a regular file.")
            found.append(ModelFile(rel.as_posix(), path, st.st_size, link))
    found.sort(key=lambda f: sort_key(f.name))
    return found
