"""`gkit pull`: a Hub repository at a pinned commit, copied out of the cache as real files.

huggingface_hub does the transfer (resumable, progress bars, HF_HUB_OFFLINE=1 served from
the local cache). Its cache holds snapshots as symlinks into a blob store outside the
snapshot, which a verifier must refuse, so the snapshot is materialised into `dest` as
hard links (or copies across filesystems) before it is verified.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from granite_ops_kit.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from granite_ops_kit.supply.verify import VerifyResult

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class PullResult:
    repo_id: str
    revision: str
    commit: str
    dest: str
    files: int
    bytes: int


@dataclass(frozen=True, kw_only=True)
class PulledModel:
    """`gkit pull`: the commit pulled and its verification; or, in loader mode, that this
    commit was already loaded and verified (skipped, with only what its marker names)."""

    repo_id: str
    commit: str
    dest: str
    manifest_digest: str | None
    revision: str | None = None
    files: int | None = None
    bytes: int | None = None
    verification: VerifyResult | None = None
    skipped: bool = False

    def to_json(self) -> dict:
        if self.skipped:
            keys = ("repo_id", "commit", "manifest_digest", "dest")
            return {**{k: getattr(self, k) for k in keys}, "skipped": True}
        return {
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "skipped"},
            "verification": self.verification.to_json() if self.verification else None,
        }


def _digest(value) -> str | None:
    """A manifest digest read from the ready marker, if it is one (the marker is anyone's
    who can write the claim: nothing else it holds is reported)."""
    return value if isinstance(value, str) and DIGEST.match(value) else None


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


MARKER_LIMIT = 64 * 1024


def already_loaded(marker: Path, repo_id: str, revision: str | None) -> dict | None:
    """The ready marker a loader wrote after verifying this exact commit, if there is one.

    The marker only saves a download: the pod's verify step checks the model against its
    pinned trust inputs and manifest digest on every start, whatever the marker says."""
    from granite_runtime.spec.bounded_read import UnsafeInput, read_json_object

    try:
        doc = read_json_object(marker, MARKER_LIMIT, what="ready marker")
    except UnsafeInput as e:
        if e.missing:
            return None
        raise CheckFailed(str(e)) from None
    if doc.get("repo_id") == repo_id and revision and doc.get("commit") == revision:
        return doc
    return None


def staging_dir(dest: Path) -> Path:
    """Where a loader pulls before the model is verified: beside dest, on the same volume,
    so the verified copy moves into place with a rename."""
    stage = dest.parent / f".incoming-{dest.name}"
    if stage.exists():
        shutil.rmtree(stage)  # a pull that died half-way
    return stage


def move_into_place(stage: Path, dest: Path, marker: Path, record: dict) -> None:
    """Swap the verified copy in, then write the marker: a crash in between leaves no marker,
    so the next start pulls again instead of trusting a half-moved model."""
    old = dest.parent / f".replaced-{dest.name}"
    if dest.exists():
        if old.exists():
            shutil.rmtree(old)
        dest.rename(old)
    stage.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.rename(marker)


def pull_and_verify(
    repo_id: str,
    *,
    revision: str | None,
    dest: Path,
    trust,
    policy: str,
    recorder,
    progress=None,
    ready_marker: Path | None = None,
) -> PulledModel:
    """`gkit pull`: the repository at a pinned commit into dest, then its signature verified
    per policy; artifact.pulled and the verification are recorded. With a ready marker
    (loader mode), a commit already loaded and verified is skipped, and a new one is pulled
    beside dest, verified, moved into place and only then marked."""
    from granite_ops_kit.audit import events
    from granite_ops_kit.supply.verify import VerifyRequest, verify

    if ready_marker and (done := already_loaded(ready_marker, repo_id, revision)):
        return PulledModel(
            repo_id=repo_id,
            commit=str(done.get("commit")),
            dest=str(dest.resolve()),
            manifest_digest=_digest(done.get("manifest_digest")),
            skipped=True,
        )
    pulled = pull(repo_id, revision, staging_dir(dest) if ready_marker else dest)
    recorder.record(events.pulled(pulled))
    req = VerifyRequest(
        model_path=Path(pulled.dest),
        trust=trust,
        policy=policy,
        revision=pulled.commit,
        supplier=repo_id.split("/")[0],
    )
    verified = verify(req, progress, recorder)
    if ready_marker:
        marker = {"repo_id": repo_id, "commit": pulled.commit}
        marker["manifest_digest"] = verified.manifest_digest
        move_into_place(Path(pulled.dest), dest, ready_marker, marker)
    return PulledModel(
        repo_id=repo_id,
        revision=pulled.revision,
        commit=pulled.commit,
        dest=str(dest.resolve()) if ready_marker else pulled.dest,
        files=pulled.files,
        bytes=pulled.bytes,
        manifest_digest=verified.manifest_digest,
        verification=verified,
    )
