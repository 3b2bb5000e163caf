"""`gkit sign`: hash the model, build the OMS statement, sign it with a key, write the bundle.

Bundles are the reference's format (Sigstore bundle v0.3, DSSE, in-toto v1, predicate
v1.0), so `model_signing verify` accepts them. The signature file is always left out of
the manifest, as are the git paths the reference leaves out.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from granite_ops_kit.audit import events
from granite_ops_kit.errors import UsageError
from granite_ops_kit.supply import bundle as bundle_io
from granite_ops_kit.supply import hashing, measure, model_files, statement, trust
from granite_ops_kit.supply.verify import default_signature


@dataclass(kw_only=True)
class SignRequest:
    model_path: Path
    key: Path
    certificate: Path | None = None
    certificate_chain: list[Path] = field(default_factory=list)
    method: str = "files"
    hash_type: str = "sha256"
    shard_size: int = hashing.DEFAULT_SHARD_SIZE
    signature: Path | None = None
    ignore_paths: list[str] = field(default_factory=list)


@dataclass
class SignResult:
    model_path: str
    signature: str
    method: str
    manifest_digest: str
    serialization: dict
    files: int
    bytes: int
    key_fingerprint: str
    seconds: float


def _private_key(path: Path):
    import os

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"private key {path} does not exist.") from None
    password = os.environ.get("GKIT_KEY_PASSWORD")
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except (ValueError, TypeError) as e:
        raise UsageError(
            f"{path} is not a usable PEM private key ({e}); an encrypted key "
            "takes its password from GKIT_KEY_PASSWORD."
        ) from None
    ec_key = isinstance(key, ec.EllipticCurvePrivateKey)
    if not ec_key or key.curve.key_size not in trust.CURVE_HASH:
        raise UsageError(f"{path} is not an EC P-256/384/521 key (OMS signs with those).")
    return key


def _certificates(req: SignRequest, key) -> list[x509.Certificate]:
    try:
        leaf = x509.load_pem_x509_certificate(req.certificate.read_bytes())
        chain = [
            c
            for p in req.certificate_chain
            for c in x509.load_pem_x509_certificates(p.read_bytes())
        ]
    except FileNotFoundError as e:
        raise UsageError(f"certificate file {e.filename} does not exist.") from None
    except ValueError:
        raise UsageError("a --certificate or --certificate-chain file is not PEM.") from None
    if leaf.public_key() != key.public_key():
        raise UsageError(f"{req.certificate} does not certify the key in {req.key}.")
    return [leaf, *chain]


def _verification_material(req: SignRequest, key) -> dict:
    if req.certificate is None:
        if req.certificate_chain:
            raise UsageError("--certificate-chain needs --certificate (the signing certificate).")
        return {"publicKey": {"hint": trust.key_hint(key.public_key())}}
    der = [c.public_bytes(serialization.Encoding.DER) for c in _certificates(req, key)]
    return {
        "x509CertificateChain": {
            "certificates": [{"rawBytes": base64.b64encode(d).decode()} for d in der]
        }
    }


def _check_piece_count(count: int, shard_size: int) -> None:
    """Refuse to write a statement that gkit verify (and any careful verifier) refuses."""
    small = shard_size < statement.MIN_SHARD_SIZE and count > statement.MAX_SMALL_SHARDS
    if count > statement.MAX_RESOURCES or small:
        raise UsageError(
            f"--shard-size {shard_size:,} makes {count:,} resources; at most "
            f"{statement.MAX_RESOURCES:,} are accepted, and {statement.MAX_SMALL_SHARDS:,} "
            "below 1 MiB: use a larger shard size."
        )


def sign(
    req: SignRequest,
    progress: Callable[[int, int], Callable[[int], None]] | None = None,
    recorder: events.Recorder | None = None,
) -> SignResult:
    """Sign the model and write the bundle; with a recorder, artifact.signed is recorded."""
    result = _signed(req, progress)
    if recorder is not None:
        recorder.record(events.signed(result))
    return result


def _signed(req: SignRequest, progress) -> SignResult:
    start = time.perf_counter()
    if not req.model_path.exists():
        raise UsageError(f"model path {req.model_path} does not exist.")
    hash_type = hashing.canonical_hash_type(req.hash_type)
    key = _private_key(req.key)
    material = _verification_material(req, key)
    signature = req.signature or default_signature(req.model_path)
    ignores = [*req.ignore_paths, *model_files.signature_ignore(req.model_path, signature)]
    measured = measure.measure(
        measure.list_model(req.model_path, ignores, allow_symlinks=False),
        method=req.method,
        hash_type=hash_type,
        shard_size=req.shard_size,
        progress=progress,
        check_pieces=lambda count: _check_piece_count(count, req.shard_size),
    )
    recorded_ignores = sorted({*ignores, *model_files.GIT_PATHS}) if req.model_path.is_dir() else []
    ser = {
        "method": req.method,
        "hash_type": hash_type,
        "allow_symlinks": False,
        **({"shard_size": req.shard_size} if req.method == "shards" else {}),
        **({"ignore_paths": recorded_ignores} if recorded_ignores else {}),
    }
    name = req.model_path.resolve().name
    doc = statement.build(name, measured.resources(), ser)
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    digest_alg = trust.CURVE_HASH[key.curve.key_size]()
    sig = key.sign(bundle_io.pae(payload), ec.ECDSA(digest_alg))
    bundle_io.write_atomic(signature, bundle_io.envelope_bundle(payload, sig, material))
    return SignResult(
        model_path=str(req.model_path.resolve()),
        signature=str(signature),
        method="certificate" if req.certificate else "key",
        manifest_digest=statement.parse(payload).manifest_digest,
        serialization=ser,
        files=len(measured.files),
        bytes=measured.bytes,
        key_fingerprint=trust.key_hint(key.public_key()),
        seconds=round(time.perf_counter() - start, 3),
    )


def to_json(result: SignResult) -> dict:
    return asdict(result)
