"""Signed checkpoints of the audit log in the C2SP signed-note format, with Ed25519.

A checkpoint body is `<origin>\\n<tree size>\\n<base64 RFC 6962 root>\\n`; the note adds a
blank line and one signature line `— <key name> <base64(4-byte key id || signature)>`.
The key id is the first 4 bytes of SHA-256(key name || "\\n" || 0x01 || raw public key), as
C2SP specifies for Ed25519. An auditor can check one with openssl alone (docs/audit.md).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from granite_ops_kit.audit import merkle
from granite_ops_kit.errors import UsageError

EM_DASH = "\u2014"
ED25519 = b"\x01"


@dataclass(frozen=True)
class Note:
    origin: str
    size: int
    root_b64: str
    key_name: str
    signature: bytes  # 64 bytes, without the key id
    body: str
    key_id: bytes = b""  # the 4 bytes before the signature


def key_id(name: str, public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + raw).digest()[:4]


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key, created (mode 0600) on first use; never logged or recorded."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as bad:
            raise UsageError(f"{path}: not a PEM private key ({bad}).") from None
        except TypeError:  # encrypted: nothing here could ask for its passphrase
            raise UsageError(f"{path}: the audit signing key must not be encrypted.") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise UsageError(f"{path}: the audit signing key must be Ed25519.")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return key


def fingerprint(public_key_pem: str) -> str:
    """sha256 of the DER public key: what verify.sh prints (`openssl pkey -outform DER`)."""
    public = serialization.load_pem_public_key(public_key_pem.encode())
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def public_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def load_key(path: Path) -> Ed25519PrivateKey:
    """An existing signing key; a command that must not invent a new signer uses this."""
    if not path.is_file():
        raise UsageError(
            f"no audit signing key at {path}: create one with `gkit audit checkpoint --key "
            f"{path}` (and publish its fingerprint), or pass --key."
        )
    return load_or_create_key(path)


def sign(
    origin: str,
    leaves: list[bytes],
    key: Ed25519PrivateKey,
    key_name: str,
    extensions: tuple[str, ...] = (),
) -> str:
    """The signed note of leaves 1..n; `extensions` are C2SP extension lines after the root,
    signed with it (an evidence export puts its manifest's digest there)."""
    body = f"{origin}\n{len(leaves)}\n{base64.b64encode(merkle.root(leaves)).decode()}\n"
    body += "".join(f"{line}\n" for line in extensions)
    signature = key.sign(body.encode())
    blob = base64.b64encode(key_id(key_name, key.public_key()) + signature).decode()
    return f"{body}\n{EM_DASH} {key_name} {blob}\n"


def parse_note(note: str) -> Note | None:
    body, sep, sigs = note.partition("\n\n")
    lines = body.split("\n")
    if not sep or len(lines) < 3:
        return None
    try:
        size = int(lines[1])
        dash, name, blob = sigs.strip().split("\n")[0].split(" ")
        raw = base64.b64decode(blob, validate=True)
    except ValueError:
        return None
    if dash != EM_DASH or len(raw) != 68:
        return None
    return Note(lines[0], size, lines[2], name, raw[4:], body + "\n", raw[:4])


def _claimed(note: str, public_key_pem: str) -> tuple[Note, Ed25519PublicKey] | None:
    """The parsed note and the Ed25519 key, where the note's signature line names that key
    (its key id under the note's key name); None otherwise."""
    parsed = parse_note(note)
    try:
        public = serialization.load_pem_public_key(public_key_pem.encode())
    except ValueError:
        return None
    if parsed is None or not isinstance(public, Ed25519PublicKey):
        return None
    return (parsed, public) if parsed.key_id == key_id(parsed.key_name, public) else None


def signed_by(note: str, public_key_pem: str) -> bool:
    """Whether the note claims this key's signature: a claim for `verify_note`, not proof."""
    return _claimed(note, public_key_pem) is not None


def verify_note(note: str, public_key_pem: str) -> bool:
    claimed = _claimed(note, public_key_pem)
    if claimed is None:
        return False
    parsed, public = claimed
    try:
        public.verify(parsed.signature, parsed.body.encode())
    except InvalidSignature:
        return False
    return True
