"""Keys and certificate chains for signing tests, made with `cryptography` (real X.509)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.now(UTC)


def write_key(key, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def write_public(key, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def write_cert(cert, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def new_key(curve=ec.SECP256R1):
    return ec.generate_private_key(curve())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def certificate(
    subject_key,
    cn: str,
    issuer_key=None,
    issuer_cn: str | None = None,
    *,
    ca: bool,
    code_signing: bool = True,
    san_email: str | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    path_length: int | None = None,
    permitted_emails: list[str] | None = None,
):
    issuer_key = issuer_key or subject_key
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer_cn or cn))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=365))
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    )
    if permitted_emails:
        b = b.add_extension(
            x509.NameConstraints([x509.RFC822Name(e) for e in permitted_emails], None),
            critical=True,
        )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        b = b.add_extension(
            x509.KeyUsage(code_signing, False, False, False, False, False, False, False, False),
            critical=True,
        )
        eku = (
            [ExtendedKeyUsageOID.CODE_SIGNING]
            if code_signing
            else [ExtendedKeyUsageOID.SERVER_AUTH]
        )
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san_email:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(san_email)]), critical=False
        )
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    root: Path
    intermediate: Path
    leaf: Path
    leaf_key: Path


def make_pki(
    d: Path,
    name: str = "pki",
    *,
    san_email: str = "ml-release@example.com",
    code_signing: bool = True,
    leaf_not_after: datetime | None = None,
    leaf_not_before: datetime | None = None,
) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    root_key, int_key, leaf_key = new_key(), new_key(), new_key()
    ca_since = NOW - timedelta(days=400)  # CAs older than any leaf, as in real PKIs
    root = certificate(root_key, f"{name}-root", ca=True, not_before=ca_since)
    inter = certificate(
        int_key, f"{name}-intermediate", root_key, f"{name}-root", ca=True, not_before=ca_since
    )
    leaf = certificate(
        leaf_key,
        f"{name}-signer",
        int_key,
        f"{name}-intermediate",
        ca=False,
        code_signing=code_signing,
        san_email=san_email,
        not_before=leaf_not_before,
        not_after=leaf_not_after,
    )
    return Pki(
        write_cert(root, d / f"{name}-root.pem"),
        write_cert(inter, d / f"{name}-intermediate.pem"),
        write_cert(leaf, d / f"{name}-leaf.pem"),
        write_key(leaf_key, d / f"{name}-leaf.key"),
    )
