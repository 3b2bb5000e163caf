"""The signature file: a Sigstore bundle holding a DSSE envelope, read with diagnoses.

The reference answers a damaged bundle with an empty message; here every defect is a
sentence naming the file and the field. The trust method is read from the bundle itself.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

from granite_ops_kit.errors import UsageError, VerificationFailed
from granite_ops_kit.supply.statement import PAYLOAD_TYPE
from granite_runtime.spec import bounded_read

MEDIA_TYPE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
MEDIA_TYPES = (
    MEDIA_TYPE_V03,
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
)
MAX_BUNDLE_BYTES = 64 << 20  # statement.MAX_RESOURCES resources fit in ~20 MB
MAX_CERTIFICATES = 10


@dataclass
class Bundle:
    path: Path
    raw: dict
    method: str  # "key", "certificate" or "sigstore"
    payload: bytes
    payload_type: str
    signature: bytes
    certificates: list[bytes] = field(default_factory=list)  # DER, leaf first
    key_hint: str | None = None
    embedded_key_pem: bytes | None = None  # model-signing 0.3 put the PEM in the bundle


def pae(payload: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    head = f"DSSEv1 {len(payload_type)} {payload_type} {len(payload)} ".encode()
    return head + payload


def pae_compat(payload: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """model-signing 0.2 signed `str(bytes)` by mistake ("DSSEV1 ... b'...'"): still valid."""
    return f"DSSEV1 {len(payload_type)} {payload_type} {len(payload)} {payload!r}".encode()


def _b64(value, where: str, path: Path) -> bytes:
    if not isinstance(value, str) or not value:
        raise VerificationFailed(f"{path}: {where} is missing.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationFailed(f"{path}: {where} is not valid base64.") from None


def _truncated(text: bytes, e: json.JSONDecodeError) -> bool:
    """The parser ran out of input: at the end, or inside a string never closed."""
    if e.pos >= len(text.rstrip()):
        return True
    return e.msg.startswith("Unterminated string") and b'"' not in text[e.pos + 1 :]


def _load_json(path: Path, follow_links: bool) -> dict:
    try:
        text = bounded_read.read_bytes(
            path, MAX_BUNDLE_BYTES, follow_links=follow_links, what="signature file"
        )
    except bounded_read.UnsafeInput as e:
        if e.missing:
            raise UsageError(
                f"signature file {path} does not exist (sign the model, or pass --signature PATH)."
            ) from None
        raise VerificationFailed(f"{e.message} It is not a model signature.") from None
    if not text.strip():
        raise VerificationFailed(f"{path} is empty; it holds no signature.")
    try:
        doc = json.loads(text)
    except RecursionError:
        doc = None
    except UnicodeDecodeError:
        raise VerificationFailed(f"{path} is not UTF-8 JSON; not a Sigstore bundle.") from None
    except json.JSONDecodeError as e:
        where = "ends early (truncated)" if _truncated(text, e) else "is corrupt"
        raise VerificationFailed(
            f"{path} {where}: invalid JSON at byte {e.pos} of {len(text)} ({e.msg})."
        ) from None
    except ValueError:  # an integer past Python's digit limit: no bundle holds one
        raise VerificationFailed(
            f"{path} holds a number too long to read; not a Sigstore bundle."
        ) from None
    if doc is None or bounded_read.too_deep(doc, bounded_read.MAX_JSON_DEPTH):
        raise VerificationFailed(
            f"{path} is nested deeper than {bounded_read.MAX_JSON_DEPTH} levels; not a "
            "Sigstore bundle."
        )
    if not isinstance(doc, dict):
        raise VerificationFailed(f"{path} is JSON but not a Sigstore bundle object.")
    return doc


def _obj(value) -> dict:
    return value if isinstance(value, dict) else {}


def _method(vm: dict, path: Path) -> str:
    if "publicKey" in vm:
        return "key"
    if "certificate" in vm:
        return "sigstore"
    if "x509CertificateChain" in vm:
        # bundles before v0.3 carried Fulcio chains here; a transparency-log entry says so
        return "sigstore" if vm.get("tlogEntries") else "certificate"
    raise VerificationFailed(
        f"{path}: verificationMaterial holds no publicKey, certificate or x509CertificateChain."
    )


def read(path: Path, *, follow_links: bool = False) -> Bundle:
    """Parse the bundle; nothing in it is trusted until trust.check has verified it.

    The default model.sig inside a model directory is never read through a link."""
    doc = _load_json(path, follow_links)
    media = doc.get("mediaType")
    if media not in MEDIA_TYPES:
        raise VerificationFailed(f"{path}: mediaType {media!r} is not a Sigstore bundle.")
    vm, env = doc.get("verificationMaterial"), doc.get("dsseEnvelope")
    if not isinstance(vm, dict):
        raise VerificationFailed(f"{path}: verificationMaterial is missing.")
    if not isinstance(env, dict):
        raise VerificationFailed(
            f"{path}: dsseEnvelope is missing (a model signature signs a DSSE envelope)."
        )
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], dict):
        raise VerificationFailed(f"{path}: dsseEnvelope must hold exactly one signature.")
    method = _method(vm, path)
    bundle = Bundle(
        path=path,
        raw=doc,
        method=method,
        payload=_b64(env.get("payload"), "dsseEnvelope.payload", path),
        payload_type=str(env.get("payloadType")),
        signature=_b64(sigs[0].get("sig"), "dsseEnvelope.signatures[0].sig", path),
    )
    if bundle.payload_type != PAYLOAD_TYPE:
        raise VerificationFailed(
            f"{path}: payloadType {bundle.payload_type!r} is not {PAYLOAD_TYPE}."
        )
    if method == "key":
        pk = _obj(vm["publicKey"])
        bundle.key_hint = str(pk.get("hint") or "") or None
        if pk.get("rawBytes"):
            bundle.embedded_key_pem = _b64(pk["rawBytes"], "publicKey.rawBytes", path)
    elif "certificate" in vm:
        bundle.certificates = [
            _b64(_obj(vm["certificate"]).get("rawBytes"), "certificate.rawBytes", path)
        ]
    else:
        certs = _obj(vm["x509CertificateChain"]).get("certificates")
        if not isinstance(certs, list) or not certs:
            raise VerificationFailed(f"{path}: x509CertificateChain holds no certificate.")
        if len(certs) > MAX_CERTIFICATES:
            raise VerificationFailed(
                f"{path}: x509CertificateChain holds {len(certs)} certificates; at most "
                f"{MAX_CERTIFICATES} make a chain."
            )
        bundle.certificates = [
            _b64(
                c.get("rawBytes") if isinstance(c, dict) else None,
                f"x509CertificateChain.certificates[{i}].rawBytes",
                path,
            )
            for i, c in enumerate(certs)
        ]
    return bundle


def write_atomic(path: Path, doc: dict) -> None:
    """Write JSON to a temp file beside `path`, then rename: never a half-written signature."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o644 & ~umask)  # mkstemp makes 0600; a signature is public
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def envelope_bundle(payload: bytes, signature: bytes, verification_material: dict) -> dict:
    return {
        "mediaType": MEDIA_TYPE_V03,
        "verificationMaterial": {**verification_material, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
