"""Is the signature good, and whose is it? One check per trust method in the bundle.

- key: ECDSA over the DSSE PAE with the given public key (hint checked first).
- certificate: a chain built from the bundle to the roots the user names; each link's
  signature, CA constraints and validity are checked, the leaf must be usable for code
  signing, and its SAN must match `--identity` when given. The leaf must be valid *now*
  unless the policy accepts signing-time validity (the reference accepts an expired leaf).
- sigstore: sigstore-python's verifier, offline, with the trusted root it ships (or
  `--trust-config`), identity and issuer matched exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from granite_ops_kit.errors import UsageError, VerificationFailed
from granite_ops_kit.supply.bundle import Bundle, pae, pae_compat

CURVE_HASH = {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}


@dataclass
class TrustInputs:
    public_key: Path | None = None
    certificate_chain: list[Path] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    issuer: str | None = None
    trust_config: Path | None = None
    accept_signing_time_validity: bool = False
    now: datetime | None = None


@dataclass
class Signer:
    """Who signed, as far as the method can tell; goes into the result and the audit log."""

    method: str
    key_fingerprint: str = ""  # sha256 of the PEM public key (the OMS key hint)
    identities: list[str] = field(default_factory=list)  # SAN emails and URIs
    issuer: str | None = None
    subject: str | None = None
    not_before: str | None = None
    not_after: str | None = None


def key_hint(public_key) -> str:
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def _ec_hash(public_key, where: str):
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise VerificationFailed(f"{where} is not an elliptic-curve key (P-256/384/521).")
    size = public_key.curve.key_size
    if size not in CURVE_HASH:
        raise VerificationFailed(f"{where} uses an unsupported curve ({public_key.curve.name}).")
    return CURVE_HASH[size]()


def _verify_envelope(public_key, bundle: Bundle, who: str) -> None:
    """ECDSA over PAE; then the two encodings model-signing 0.2 produced by mistake."""
    digest = _ec_hash(public_key, who)
    attempts = [
        (pae(bundle.payload), digest),
        (pae_compat(bundle.payload), digest),
        (pae_compat(bundle.payload), hashes.SHA256()),
    ]
    for message, algorithm in attempts:
        try:
            public_key.verify(bundle.signature, message, ec.ECDSA(algorithm))
            return
        except InvalidSignature:
            continue
    raise VerificationFailed(
        f"{bundle.path}: the signature does not verify with {who}: the signed statement was "
        "edited after signing, or it was signed by a different key."
    )


def _load_public_key(path: Path):
    try:
        return serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"public key {path} does not exist.") from None
    except ValueError:
        raise UsageError(f"{path} is not a PEM public key.") from None


def check_key(bundle: Bundle, inputs: TrustInputs) -> Signer:
    if inputs.public_key is None:
        raise UsageError(f"{bundle.path} is signed with a key: pass --public-key PEM.")
    key = _load_public_key(inputs.public_key)
    _ec_hash(key, f"public key {inputs.public_key}")
    hint = key_hint(key)
    if bundle.key_hint and bundle.key_hint.lower() != hint:
        raise VerificationFailed(
            f"{bundle.path} was signed by a different key: its key hint is {bundle.key_hint}, "
            f"{inputs.public_key} has {hint}."
        )
    if bundle.embedded_key_pem:
        try:
            embedded = serialization.load_pem_public_key(bundle.embedded_key_pem)
        except ValueError:
            raise VerificationFailed(
                f"{bundle.path}: publicKey.rawBytes is not a PEM key."
            ) from None
        if embedded != key:
            raise VerificationFailed(
                f"{bundle.path} was signed by a different key than {inputs.public_key}."
            )
    _verify_envelope(key, bundle, f"public key {inputs.public_key}")
    return Signer("key", key_fingerprint=hint)


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *ext.get_values_for_type(x509.RFC822Name),
        *ext.get_values_for_type(x509.UniformResourceIdentifier),
    ]


def _load_anchors(paths: list[Path]) -> list[x509.Certificate]:
    anchors = []
    for p in paths:
        try:
            anchors += x509.load_pem_x509_certificates(p.read_bytes())
        except FileNotFoundError:
            raise UsageError(f"certificate chain file {p} does not exist.") from None
        except ValueError:
            raise UsageError(f"{p} holds no PEM certificate.") from None
    return anchors


def _check_leaf_usage(leaf: x509.Certificate, path: Path) -> None:
    """Key usage must allow digital signatures and extended key usage code signing, where
    present; at least one must be present (stricter than the reference, which takes either)."""
    ku = eku = None
    for ext in leaf.extensions:
        if ext.oid == ExtensionOID.KEY_USAGE:
            ku = ext.value
        elif ext.oid == ExtensionOID.EXTENDED_KEY_USAGE:
            eku = ext.value
    if ku is None and eku is None:
        raise VerificationFailed(
            f"{path}: the signing certificate declares no key usage; it is not meant for signing."
        )
    if ku is not None and not ku.digital_signature:
        raise VerificationFailed(
            f"{path}: the signing certificate's key usage does not include digitalSignature."
        )
    if eku is not None and ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        raise VerificationFailed(
            f"{path}: the signing certificate's extended key usage does not include code signing."
        )


def _within(cert: x509.Certificate, when: datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def _issuer_of(cert, pool):
    for candidate in pool:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def _check_ca(cert: x509.Certificate, path: Path) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise VerificationFailed(
            f"{path}: '{cert.subject.rfc4514_string()}' issues a certificate but is not a CA."
        )


def _build_chain(leaf, intermediates, anchors, path: Path, when: datetime) -> list:
    chain, cert = [leaf], leaf
    for _ in range(10):
        if cert in anchors:
            return chain
        issuer = _issuer_of(cert, anchors) or _issuer_of(cert, intermediates)
        if issuer is None:
            raise VerificationFailed(
                f"{path}: the certificate chain does not lead to a trusted root: no trusted "
                f"issuer for '{cert.subject.rfc4514_string()}' (issued by "
                f"'{cert.issuer.rfc4514_string()}')."
            )
        _check_ca(issuer, path)
        if not _within(issuer, when):
            raise VerificationFailed(
                f"{path}: CA certificate '{issuer.subject.rfc4514_string()}' is not valid at "
                f"{when.isoformat()} (valid {issuer.not_valid_before_utc.isoformat()} to "
                f"{issuer.not_valid_after_utc.isoformat()})."
            )
        chain.append(issuer)
        cert = issuer
    raise VerificationFailed(f"{path}: the certificate chain is longer than 10 links.")


def check_certificate(bundle: Bundle, inputs: TrustInputs) -> Signer:
    if not inputs.certificate_chain:
        raise UsageError(
            f"{bundle.path} is signed with a certificate: pass --certificate-chain with the "
            "root (and intermediate) certificates you trust."
        )
    anchors = _load_anchors(inputs.certificate_chain)
    try:
        certs = [x509.load_der_x509_certificate(c) for c in bundle.certificates]
    except ValueError:
        raise VerificationFailed(
            f"{bundle.path}: a certificate in the bundle is not DER."
        ) from None
    leaf = certs[0]
    now = inputs.now or datetime.now(UTC)
    if not _within(leaf, now):
        if not inputs.accept_signing_time_validity:
            raise VerificationFailed(
                f"{bundle.path}: the signing certificate expired on "
                f"{leaf.not_valid_after_utc.isoformat()} (or is not valid yet); the policy "
                "does not accept signing-time validity."
            )
        now = leaf.not_valid_before_utc  # validity at signing time, as the reference checks
    _build_chain(leaf, certs[1:], anchors, bundle.path, now)
    _check_leaf_usage(leaf, bundle.path)
    sans = _sans(leaf)
    if inputs.identities and not set(inputs.identities) & set(sans):
        raise VerificationFailed(
            f"{bundle.path}: the signing certificate's identity {sans or '(none: no SAN)'} is "
            f"not one of {inputs.identities}."
        )
    _verify_envelope(leaf.public_key(), bundle, "the signing certificate's key")
    return Signer(
        "certificate",
        key_fingerprint=key_hint(leaf.public_key()),
        identities=sans,
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        not_before=leaf.not_valid_before_utc.isoformat(),
        not_after=leaf.not_valid_after_utc.isoformat(),
    )


def _sigstore_verifier(trust_config: Path | None):
    from sigstore.models import ClientTrustConfig, TrustedRoot
    from sigstore.verify import Verifier

    if trust_config is None:
        return Verifier(trusted_root=ClientTrustConfig.production(offline=True).trusted_root)
    try:
        text = trust_config.read_text()
    except FileNotFoundError:
        raise UsageError(f"trust config {trust_config} does not exist.") from None
    for load in (
        lambda: ClientTrustConfig.from_json(text).trusted_root,
        lambda: TrustedRoot.from_file(str(trust_config)),
    ):
        try:
            return Verifier(trusted_root=load())
        except Exception:  # sigstore raises several types; try the other form
            continue
    raise UsageError(
        f"{trust_config} is neither a Sigstore client trust config nor a trusted root."
    )


def _oidc_issuer(cert: x509.Certificate) -> str | None:
    """Fulcio's OIDC issuer extension: v2 (DER UTF8String) or v1 (raw bytes)."""
    for ext in cert.extensions:
        if ext.oid.dotted_string == "1.3.6.1.4.1.57264.1.8":
            raw = ext.value.value
            return raw[2:].decode(errors="replace") if raw[:1] == b"\x0c" else raw.decode()
    for ext in cert.extensions:
        if ext.oid.dotted_string == "1.3.6.1.4.1.57264.1.1":
            return ext.value.value.decode(errors="replace")
    return None


def check_sigstore(bundle: Bundle, inputs: TrustInputs) -> Signer:
    import json

    from sigstore.errors import Error as SigstoreError
    from sigstore.models import Bundle as SigstoreBundle
    from sigstore.verify import policy

    if not inputs.identities or not inputs.issuer:
        raise UsageError(
            f"{bundle.path} is a Sigstore keyless signature: pass --identity and --issuer, or "
            "a policy that names them (e.g. --policy ibm-granite)."
        )
    verifier = _sigstore_verifier(inputs.trust_config)
    try:
        sb = SigstoreBundle.from_json(json.dumps(bundle.raw))
    except Exception as e:  # sigstore's parser raises many types
        raise VerificationFailed(f"{bundle.path} is not a valid Sigstore bundle: {e}") from None
    rule = policy.AnyOf(
        [policy.Identity(identity=i, issuer=inputs.issuer) for i in inputs.identities]
    )
    cert = sb.signing_certificate
    try:
        verifier.verify_dsse(sb, rule)
    except SigstoreError as e:
        sans, issuer = _sans(cert), _oidc_issuer(cert)
        if issuer != inputs.issuer:
            raise VerificationFailed(
                f"{bundle.path}: signed through issuer {issuer}, not {inputs.issuer}."
            ) from None
        if not set(sans) & set(inputs.identities):
            raise VerificationFailed(
                f"{bundle.path}: signed by {', '.join(sans) or '(no identity)'}, which is not "
                f"one of {', '.join(inputs.identities)}."
            ) from None
        raise VerificationFailed(f"{bundle.path}: Sigstore verification failed: {e}") from None
    return Signer(
        "sigstore",
        key_fingerprint=key_hint(cert.public_key()),
        identities=_sans(cert),
        issuer=_oidc_issuer(cert) or inputs.issuer,
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
    )


def check(bundle: Bundle, inputs: TrustInputs) -> Signer:
    return {"key": check_key, "certificate": check_certificate, "sigstore": check_sigstore}[
        bundle.method
    ](bundle, inputs)
