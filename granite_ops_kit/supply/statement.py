"""The signed content: an in-toto Statement v1 whose predicate is the OMS model manifest.

`build` makes the statement `gkit sign` signs; `parse` reads one back from a verified DSSE
payload, for both predicate types (v1.0 and the legacy v0.1 of model-signing 0.2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import rfc8785

from granite_ops_kit.errors import VerificationFailed
from granite_ops_kit.supply.model_files import sort_key
from granite_runtime.spec import bounded_read

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_V1 = "https://model_signing/signature/v1.0"
PREDICATE_LEGACY = "https://model_signing/Digests/v0.1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
# Bounds on what a statement may ask of the verifier, before any file is hashed. A model of
# 100,000 files, or 100 TB in 1 GB shards, is far beyond any real checkpoint.
MAX_RESOURCES = 100_000
MAX_IGNORE_PATHS = 1_000
# Shards below 1 MiB turn hashing into bookkeeping (a 6 MB model in 1-byte shards is six
# million resources); the reference never writes them by default. A signed statement with
# smaller shards is accepted only while it lists few of them.
MIN_SHARD_SIZE = 1 << 20
MAX_SMALL_SHARDS = 4_096


@dataclass
class SignedManifest:
    """What the signer vouched for: every resource's digest and how they were computed."""

    model_name: str
    predicate_type: str
    method: str
    hash_type: str
    resources: dict[str, tuple[str, str]]  # name -> (algorithm, hex digest)
    subject_digest: str  # OMS: sha256 over the raw resource digests, in order (no names)
    shard_size: int | None = None
    allow_symlinks: bool = False
    ignore_paths: list[str] = field(default_factory=list)

    @property
    def legacy(self) -> bool:
        return self.predicate_type == PREDICATE_LEGACY

    @property
    def manifest_digest(self) -> str:
        """gkit's name for this exact model: names, digests and serialization together.

        The OMS subject digest covers the digests only, so two models whose files were
        renamed share it; this one differs whenever any signed field differs. Canonical JSON
        (RFC 8785) makes it reproducible by anyone holding the statement."""
        doc = {
            "serialization": {
                "method": self.method,
                "hash_type": self.hash_type,
                "shard_size": self.shard_size,
                "allow_symlinks": self.allow_symlinks,
                "ignore_paths": sorted(self.ignore_paths),
            },
            "resources": [[n, alg, d] for n, (alg, d) in self.resources.items()],
        }
        return "sha256:" + hashlib.sha256(rfc8785.dumps(doc)).hexdigest()


def subject_digest(resources: dict[str, tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for _, hexdigest in resources.values():
        h.update(bytes.fromhex(hexdigest))
    return h.hexdigest()


def build(
    model_name: str,
    resources: dict[str, tuple[str, str]],
    serialization: dict,
) -> dict:
    """The v1.0 statement over `resources` (already in OMS order)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": subject_digest(resources)}}],
        "predicateType": PREDICATE_V1,
        "predicate": {
            "serialization": serialization,
            "resources": [
                {"name": name, "algorithm": alg, "digest": hexd}
                for name, (alg, hexd) in resources.items()
            ],
        },
    }


def _fail(what: str) -> VerificationFailed:
    return VerificationFailed(f"the signed statement is malformed: {what}.")


def _hex(value, where: str) -> str:
    try:
        bytes.fromhex(value)
    except (TypeError, ValueError):
        raise _fail(f"{where} is not a hex digest") from None
    return value.lower()


def _shard_size(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # the reference writes 1e9 as 1000000000.0
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _fail(f"shard_size {value!r} is not a positive integer")
    return value


def check_path(name, where: str, *, shard: bool = False) -> str:
    """A signed name or ignore path: relative, no `..`, `.` or empty components.

    The reference rejects `sub/../x`; an absolute path or a `..` would let a signature
    speak for files outside the model, or name one file two ways."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise _fail(f"{where} {name!r} is not a path")
    path = name
    if shard:
        path, sep, rest = name.rpartition(":")
        path, sep2, first = path.rpartition(":")
        if not (sep and sep2 and first.isdigit() and rest.isdigit()):
            raise _fail(f"{where} '{name}' is not a shard name (path:start:end)")
        if int(first) >= int(rest):
            raise _fail(f"{where} '{name}' is an empty or reversed byte range")
    if path == ".":
        return name  # a single-file model is signed as "."
    if path.startswith("/"):
        raise _fail(f"{where} '{name}' is an absolute path")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise _fail(f"{where} '{name}' has an empty, '.' or '..' component")
    return name


def _resources(predicate: dict, method: str) -> dict[str, tuple[str, str]]:
    items = predicate["resources"]
    if len(items) > MAX_RESOURCES:
        raise _fail(f"it lists {len(items):,} resources; at most {MAX_RESOURCES:,} are accepted")
    resources: dict[str, tuple[str, str]] = {}
    for i, r in enumerate(items):
        if not isinstance(r, dict) or not {"name", "algorithm", "digest"} <= r.keys():
            raise _fail(f"resource {i} lacks name, algorithm or digest")
        name = check_path(r["name"], f"resource {i}", shard=method == "shards")
        if name in resources:
            raise _fail(f"resource '{name}' appears twice")
        if not isinstance(r["algorithm"], str):
            raise _fail(f"resource '{name}' has no algorithm name")
        resources[name] = (r["algorithm"], _hex(r["digest"], f"resource '{name}'"))
    return resources


def _ignore_paths(ser: dict) -> list[str]:
    paths = ser.get("ignore_paths", [])
    if not isinstance(paths, list) or len(paths) > MAX_IGNORE_PATHS:
        raise _fail(f"ignore_paths is not a list of at most {MAX_IGNORE_PATHS} paths")
    return [check_path(p, "ignore path") for p in paths]


def _check_shards(resources: dict, shard_size: int | None) -> None:
    if shard_size is not None and shard_size < MIN_SHARD_SIZE and len(resources) > MAX_SMALL_SHARDS:
        raise _fail(
            f"shard_size {shard_size:,} is below 1 MiB and it lists {len(resources):,} shards; "
            f"small shards are accepted only up to {MAX_SMALL_SHARDS:,}"
        )


def _parse_v1(doc: dict) -> SignedManifest:
    subjects = doc.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise _fail("expected exactly one subject")
    predicate = doc.get("predicate")
    if not isinstance(predicate, dict) or not isinstance(predicate.get("resources"), list):
        raise _fail("predicate.resources is missing")
    ser = predicate.get("serialization")
    if not isinstance(ser, dict) or ser.get("method") not in ("files", "shards"):
        raise _fail("predicate.serialization.method is missing or not files/shards")
    if not isinstance(ser.get("hash_type"), str):
        raise _fail("predicate.serialization.hash_type is missing")
    resources = _resources(predicate, ser["method"])
    shard_size = _shard_size(ser.get("shard_size"))
    if ser["method"] == "shards":
        _check_shards(resources, shard_size)
    digest = subjects[0].get("digest")
    claimed = digest.get("sha256") if isinstance(digest, dict) else None
    actual = subject_digest(resources)
    if claimed != actual:
        raise VerificationFailed(
            f"the signed statement is inconsistent: its subject digest {claimed} is not the "
            f"hash of its resources ({actual})."
        )
    return SignedManifest(
        model_name=str(subjects[0].get("name", "")),
        predicate_type=PREDICATE_V1,
        method=ser["method"],
        hash_type={"blake2": "blake2b"}.get(ser["hash_type"], ser["hash_type"]),
        resources=resources,
        subject_digest=actual,
        shard_size=shard_size,
        allow_symlinks=ser.get("allow_symlinks") in (True, "true", "True"),
        ignore_paths=_ignore_paths(ser),
    )


def _parse_legacy(doc: dict) -> SignedManifest:
    """model-signing 0.2: one subject per file, sha256 only, no serialization block."""
    subjects = doc.get("subject")
    if not isinstance(subjects, list) or len(subjects) > MAX_RESOURCES:
        raise _fail(f"a legacy statement lists at most {MAX_RESOURCES:,} subjects")
    resources = {}
    for i, s in enumerate(subjects):
        digest = s.get("digest") if isinstance(s, dict) else None
        if not isinstance(digest, dict) or "name" not in s or "sha256" not in digest:
            raise _fail("a legacy subject lacks a name or a sha256 digest")
        name = check_path(s["name"], f"subject {i}")
        resources[name] = ("sha256", _hex(digest["sha256"], f"subject '{name}'"))
    if not resources:
        raise _fail("the legacy statement lists no files")
    resources = {k: resources[k] for k in sorted(resources, key=sort_key)}
    return SignedManifest(
        model_name="",
        predicate_type=PREDICATE_LEGACY,
        method="files",
        hash_type="sha256",
        resources=resources,
        subject_digest=subject_digest(resources),
    )


def parse(payload: bytes) -> SignedManifest:
    """Read a statement whose signature trust.check has already verified."""
    try:
        doc = bounded_read.parse_json(payload, "the DSSE payload")
    except bounded_read.UnsafeInput as e:
        raise _fail(e.message.rstrip(".")) from None
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE:
        raise _fail(f"_type is not {STATEMENT_TYPE}")
    ptype = doc.get("predicateType")
    if ptype == PREDICATE_V1:
        return _parse_v1(doc)
    if ptype == PREDICATE_LEGACY:
        return _parse_legacy(doc)
    raise _fail(f"predicate type {ptype!r} is not an OpenSSF Model Signing predicate")
