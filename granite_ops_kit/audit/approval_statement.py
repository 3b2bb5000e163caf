"""A signed approval: the approver's key vouches for subject, digest, role and time.

Without a signature an approval says only what `GKIT_ACTOR` claimed, so segregation of
duties would prove nothing. `gkit approve --key PEM` signs an RFC 8785 canonical statement;
the record carries the statement, the signature and the public key. The deploy policy lists
approvers by key fingerprint (sha256 of the DER public key) or PEM, with a name and roles,
and only a signature by a listed key counts as that approver's.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from granite_ops_kit.errors import UsageError

STATEMENT_TYPE = "https://gkit.dev/approval/v1"
MAX_KEY_BYTES = 1 << 16


def fingerprint(public_key) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _load_private(path: Path):
    from granite_runtime.spec import bounded_read

    try:
        data = bounded_read.read_bytes(path, MAX_KEY_BYTES, what="approver key")
        key = serialization.load_pem_private_key(data, None)
    except bounded_read.UnsafeInput as bad:
        raise UsageError(bad.message) from None
    except (ValueError, TypeError):
        raise UsageError(f"{path} is not an unencrypted PEM private key.") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise UsageError(f"{path}: an approver key is EC (P-256/384/521) or Ed25519.")
    return key


def _sign(key, message: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def _verify(public_key, signature: bytes, message: bytes) -> bool:
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def sign(key_path: Path, subject: str, digest: str | None, role: str, time: str) -> dict:
    """What `gkit approve --key` puts in the record's details under `signed`."""
    key = _load_private(key_path)
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "digest": digest,
        "role": role,
        "time": time,
    }
    text = rfc8785.dumps(statement)
    public = key.public_key()
    return {
        "statement": text.decode(),
        "signature": base64.b64encode(_sign(key, text)).decode(),
        "public_key": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        "key_sha256": fingerprint(public),
    }


@dataclass(frozen=True)
class Approver:
    name: str
    roles: tuple[str, ...]
    fingerprint: str


def approvers(policy_rule: dict) -> list[Approver]:
    """The deploy policy's `require_approval.approvers`: {name, roles, key_sha256 | pem}."""
    out = []
    for entry in policy_rule.get("approvers") or []:
        try:
            if entry.get("pem"):
                key = serialization.load_pem_public_key(entry["pem"].encode())
                fp = fingerprint(key)
            else:
                fp = entry["key_sha256"].lower().removeprefix("sha256:").replace(":", "")
            out.append(Approver(str(entry["name"]), tuple(entry.get("roles") or ()), fp))
        except (AttributeError, KeyError, TypeError, ValueError):
            raise UsageError(
                "the deploy policy's approvers must each have a name, roles and a key_sha256 "
                "or pem."
            ) from None
    return out


@dataclass(frozen=True)
class SignedApproval:
    approver: Approver
    subject: str
    digest: str | None
    role: str


def check(record: dict, listed: list[Approver]) -> SignedApproval | str:
    """The listed approver who signed this approval record, or why it does not count."""
    signed = (record.get("details") or {}).get("signed")
    if not isinstance(signed, dict):
        return "self-declared (unsigned)"
    try:
        public = serialization.load_pem_public_key(signed["public_key"].encode())
        statement_bytes = signed["statement"].encode()
        statement = json.loads(statement_bytes)
        signature = base64.b64decode(signed["signature"], validate=True)
    except (AttributeError, KeyError, TypeError, ValueError):
        return "its signature block is malformed"
    by_key = {a.fingerprint: a for a in listed}
    approver = by_key.get(fingerprint(public))
    if approver is None:
        return f"signed by key sha256 {fingerprint(public)}, which the deploy policy does not list"
    if statement.get("_type") != STATEMENT_TYPE or not _verify(public, signature, statement_bytes):
        return f"its signature by {approver.name} does not verify"
    if statement.get("subject") != record["subject"]["name"] or statement.get("digest") != record[
        "subject"
    ].get("digest"):
        return "its signed statement names another subject or digest than the record"
    return SignedApproval(
        approver, statement["subject"], statement.get("digest"), statement["role"]
    )
