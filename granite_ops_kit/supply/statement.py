"""The signed content: an in-toto Statement v1 whose predicate is the OMS model manifest.

`build` makes the statement `gkit sign` signs; `parse` reads one back from a verified DSSE
payload, for both predicate types (v1.0 and the legacy v0.1 of model-signing 0.2).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from granite_ops_kit.errors import VerificationFailed
from granite_ops_kit.supply.model_files import sort_key

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_V1 = "https://model_signing/signature/v1.0"
PREDICATE_LEGACY = "https://model_signing/Digests/v0.1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


@dataclass
class SignedManifest:
    """What the signer vouched for: every resource's digest and how they were computed."""

    model_name: str
    predicate_type: str
    method: str
    hash_type: str
    resources: dict[str, tuple[str, str]]  # name -> (algorithm, hex digest)
    digest: str  # the subject digest: sha256 over the raw resource digests, in order
    shard_size: int | None = None
    allow_symlinks: bool = False
    ignore_paths: list[str] = field(default_factory=list)

    @property
    def legacy(self) -> bool:
        return self.predicate_type == PREDICATE_LEGACY


def manifest_digest(resources: dict[str, tuple[str, str]]) -> str:
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
        "subject": [{"name": model_name, "digest": {"sha256": manifest_digest(resources)}}],
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


def _parse_v1(doc: dict) -> SignedManifest:
    subjects = doc.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise _fail("expected exactly one subject")
    predicate = doc.get("predicate")
    if not isinstance(predicate, dict) or not isinstance(predicate.get("resources"), list):
        raise _fail("predicate.resources is missing")
    ser = predicate.get("serialization")
    if not isinstance(ser, dict) or ser.get("method") not in ("files", "shards"):
        raise _fail("predicate.serialization.method is missing or not files/shards")
    resources: dict[str, tuple[str, str]] = {}
    for i, r in enumerate(predicate["resources"]):
        if not isinstance(r, dict) or not {"name", "algorithm", "digest"} <= r.keys():
            raise _fail(f"resource {i} lacks name, algorithm or digest")
        if r["name"] in resources:
            raise _fail(f"resource '{r['name']}' appears twice")
        resources[r["name"]] = (r["algorithm"], _hex(r["digest"], f"resource '{r['name']}'"))
    claimed = subjects[0].get("digest", {}).get("sha256")
    actual = manifest_digest(resources)
    if claimed != actual:
        raise VerificationFailed(
            f"the signed statement is inconsistent: its subject digest {claimed} is not the "
            f"hash of its resources ({actual})."
        )
    return SignedManifest(
        model_name=str(subjects[0].get("name", "")),
        predicate_type=PREDICATE_V1,
        method=ser["method"],
        hash_type={"blake2": "blake2b"}.get(ser.get("hash_type"), ser.get("hash_type")),
        resources=resources,
        digest=actual,
        shard_size=_shard_size(ser.get("shard_size")),
        allow_symlinks=ser.get("allow_symlinks") in (True, "true", "True"),
        ignore_paths=[str(p) for p in ser.get("ignore_paths", [])],
    )


def _parse_legacy(doc: dict) -> SignedManifest:
    """model-signing 0.2: one subject per file, sha256 only, no serialization block."""
    resources = {}
    for s in doc.get("subject") or []:
        if not isinstance(s, dict) or "name" not in s or "sha256" not in s.get("digest", {}):
            raise _fail("a legacy subject lacks a name or a sha256 digest")
        resources[s["name"]] = ("sha256", _hex(s["digest"]["sha256"], f"subject '{s['name']}'"))
    if not resources:
        raise _fail("the legacy statement lists no files")
    resources = {k: resources[k] for k in sorted(resources, key=sort_key)}
    return SignedManifest(
        model_name="",
        predicate_type=PREDICATE_LEGACY,
        method="files",
        hash_type="sha256",
        resources=resources,
        digest=manifest_digest(resources),
    )


def parse(payload: bytes) -> SignedManifest:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(f"the DSSE payload is not JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE:
        raise _fail(f"_type is not {STATEMENT_TYPE}")
    ptype = doc.get("predicateType")
    if ptype == PREDICATE_V1:
        return _parse_v1(doc)
    if ptype == PREDICATE_LEGACY:
        return _parse_legacy(doc)
    raise _fail(f"predicate type {ptype!r} is not an OpenSSF Model Signing predicate")
