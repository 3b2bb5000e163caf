"""This host's signature on the trust inputs a passing `gkit verify` pinned.

`gkit deploy` without trust inputs checks the model again with the ones the last passing
verification of that path recorded. The record sits in the audit store, which whoever can
write the store can append to: a record of their own naming their own key would make the
gate trust it. So `gkit verify` signs (model path, manifest digest, trust inputs) with this
host's audit signing key (kept outside the store, as for checkpoints), and the gate takes
recorded inputs only under that signature.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from granite_ops_kit.audit import checkpoint

CONTEXT = b"gkit-trust-attestation/v1\n"  # never a checkpoint note's first lines


def _message(subject: str, digest: str | None, trust: dict) -> bytes:
    body = {"subject": subject, "digest": digest, "trust": trust}
    return CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def attest(key: Ed25519PrivateKey, subject: str, digest: str | None, trust: dict) -> dict:
    """What the verification record carries: the signature and the signer's fingerprint."""
    return {
        "signature": base64.b64encode(key.sign(_message(subject, digest, trust))).decode(),
        "key_sha256": checkpoint.fingerprint(checkpoint.public_pem(key)),
    }


def attest_with_host_key(subject: str, digest: str | None, trust: dict) -> dict | None:
    """`attest` with this host's audit key, made on first use; None where it cannot be
    read or made (a read-only data directory): the record then carries no attestation, and
    a deploy must be given its trust inputs."""
    from granite_ops_kit.audit.service import default_key_path
    from granite_ops_kit.errors import UsageError

    try:
        key = checkpoint.load_or_create_key(default_key_path())
    except (OSError, UsageError):
        return None
    return attest(key, subject, digest, trust)


def host_public_key() -> tuple[str | None, Path]:
    """This host's audit public key (None if it has none yet) and where the key lives."""
    from granite_ops_kit.audit.service import default_key_path
    from granite_ops_kit.errors import UsageError

    path = default_key_path()
    try:
        return (checkpoint.public_pem(checkpoint.load_key(path)), path)
    except (OSError, UsageError):
        return None, path


def attested(record: dict, public_key_pem: str) -> bool:
    """Whether the record's trust inputs carry a valid attestation by this key, for the
    record's own subject and digest."""
    details = record.get("details") if isinstance(record.get("details"), dict) else {}
    claim, trust = details.get("trust_attestation"), details.get("trust")
    if not isinstance(claim, dict) or not isinstance(trust, dict):
        return False
    subject = record.get("subject") if isinstance(record.get("subject"), dict) else {}
    public = serialization.load_pem_public_key(public_key_pem.encode())
    if not isinstance(public, Ed25519PublicKey):
        return False
    try:
        signature = base64.b64decode(str(claim.get("signature")), validate=True)
        public.verify(signature, _message(subject.get("name"), subject.get("digest"), trust))
    except (ValueError, InvalidSignature):
        return False
    return True
