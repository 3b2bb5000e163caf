"""`gkit pull`: a Hub repository at a pinned commit, copied out of the cache as real files.

huggingface_hub does the transfer (resumable, progress bars, HF_HUB_OFFLINE=1 served from
the local cache). Its cache holds snapshots as symlinks into a blob store outside the
snapshot, which a verifier must refuse, so the snapshot is materialised into `dest` as
hard links (or copies across filesystems) before it is verified.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from granite_ops_kit.errors import CheckFailed, UsageError

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class PullResult:
    repo_id: str
    revision: str
    commit: str
    dest: str
    files: int
    bytes: int


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except RevisionNotFoundError:
        raise CheckFailed(f"{repo_id} has no revision '{revision}'.") from None
    except GatedRepoError:
        raise CheckFailed(
            f"{repo_id} is gated: accept its licence on the Hub and set HF_TOKEN."
        ) from None
    except RepositoryNotFoundError:
        raise CheckFailed(f"{repo_id} does not exist on the Hub (or needs HF_TOKEN).") from None
    except LocalEntryNotFoundError:
        raise CheckFailed(
            f"{repo_id}@{revision or 'main'} is not in the local Hugging Face cache and the Hub "
            "cannot be reached (HF_HUB_OFFLINE=1 or no network)."
        ) from None


def _materialise(snapshot: Path, dest: Path) -> tuple[int, int]:
    """Real files in dest for every file in the snapshot; links only inside the cache."""
    files = size = 0
    for src in sorted(snapshot.rglob("*")):
        if src.is_dir():
            continue
        rel = src.relative_to(snapshot)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        real = src.resolve()
        if target.exists():
            if target.stat().st_size == real.stat().st_size and os.path.samefile(target, real):
                files, size = files + 1, size + real.stat().st_size
                continue
            target.unlink()
        try:
            os.link(real, target)
        except OSError:
            shutil.copy2(real, target)
        files, size = files + 1, size + real.stat().st_size
    return files, size


def pull(repo_id: str, revision: str | None, dest: Path | None) -> PullResult:
    if not REPO_ID.match(repo_id):
        raise UsageError(f"'{repo_id}' is not a Hub repository id (owner/name).")
    snapshot = _download(repo_id, revision)
    commit = snapshot.name  # the cache names each snapshot by its commit hash
    dest = dest or Path.cwd() / repo_id.split("/")[1]
    files, size = _materialise(snapshot, dest)
    return PullResult(repo_id, revision or "main", commit, str(dest.resolve()), files, size)
