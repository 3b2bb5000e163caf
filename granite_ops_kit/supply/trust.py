"""Is the signature good, and whose is it? One check per trust method in the bundle.

- key: ECDSA over the DSSE PAE with the pinned public key. The bundle's key hint and any
  key it carries are read only after a failure, to say why: they vouch for nothing.
- certificate: cryptography's X.509 path validation (the WebPKI CA profile: basic and name
  constraints, path length, key usage, validity) from the bundle's leaf to the roots the
  user pins, with a code-signing extended key usage required of the leaf, and its SAN
  matched against `--identity` when given. The leaf must be valid *now* unless the policy
  accepts signing-time validity (the reference accepts an expired leaf).
- sigstore: sigstore-python's verifier, offline, with the trusted root it ships (or
  `--trust-config`), identity and issuer matched exactly.

`TrustInputs` holds the pinned inputs themselves (PEM bytes, not paths), so the audit record
of a verification can carry them and the deploy gate can check the model again later with
exactly what the user trusted then.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from granite_ops_kit.errors import UsageError, VerificationFailed
from granite_ops_kit.supply.bundle import Bundle, pae, pae_compat
from granite_runtime.spec import bounded_read

CURVE_HASH = {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}
MAX_TRUST_FILE_BYTES = 1 << 20  # a PEM bundle of roots, or a Sigstore trusted root
MAX_CHAIN_DEPTH = 8


def _read_trust_file(path: Path, what: str) -> bytes:
    try:
        return bounded_read.read_bytes(path, MAX_TRUST_FILE_BYTES, what=what)
    except bounded_read.UnsafeInput as e:
        raise UsageError(e.message) from None


@dataclass
class TrustInputs:
    """What the user pinned: a public key, certificate roots, a Sigstore identity and root."""

    public_key_pem: bytes | None = None
    certificate_roots_pem: list[bytes] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    issuer: str | None = None
    trust_config_json: bytes | None = None
    source: str = "the command line"  # where they came from, for messages
    accept_signing_time_validity: bool = False
    now: datetime | None = None

    @classmethod
    def from_files(
        cls,
        public_key: Path | None = None,
        certificate_chain: list[Path] | tuple[Path, ...] = (),
        identities: list[str] | tuple[str, ...] = (),
        issuer: str | None = None,
        trust_config: Path | None = None,
    ) -> TrustInputs:
        return cls(
            public_key_pem=_read_trust_file(public_key, "public key") if public_key else None,
            certificate_roots_pem=[
                _read_trust_file(p, "certificate chain file") for p in certificate_chain
            ],
            identities=list(identities),
            issuer=issuer,
            trust_config_json=_read_trust_file(trust_config, "trust config")
            if trust_config
            else None,
            source=", ".join(str(p) for p in [public_key, *certificate_chain, trust_config] if p)
            or "the command line",
        )

    @property
    def given(self) -> bool:
        return bool(
            self.public_key_pem
            or self.certificate_roots_pem
            or self.identities
            or self.issuer
            or self.trust_config_json
        )

    def to_record(self) -> dict:
        """The inputs as the audit record keeps them: fingerprints beside the PEMs."""
        keys = []
        if self.public_key_pem:
            keys.append(
                {"fingerprint": key_hint(_public_key(self)), "pem": self.public_key_pem.decode()}
            )
        roots = [
            {
                "fingerprint": certificate_fingerprint(c),
                "subject": c.subject.rfc4514_string(),
                "pem": c.public_bytes(serialization.Encoding.PEM).decode(),
            }
            for c in _anchors(self)
        ]
        config = self.trust_config_json
        return {
            "public_keys": keys,
            "certificate_roots": roots,
            "identities": list(self.identities),
            "issuer": self.issuer,
            "trust_config": {
                "sha256": hashlib.sha256(config).hexdigest(),
                "json": config.decode("utf-8", errors="replace"),
            }
            if config
            else None,
        }

    @classmethod
    def from_record(cls, trust: dict, source: str) -> TrustInputs:
        """Inverse of to_record; a record that does not hold inputs of this shape is refused."""
        try:
            keys = [k["pem"].encode() for k in trust.get("public_keys") or []]
            roots = [r["pem"].encode() for r in trust.get("certificate_roots") or []]
            config = trust.get("trust_config")
            inputs = cls(
                public_key_pem=keys[0] if keys else None,
                certificate_roots_pem=[b"".join(roots)] if roots else [],
                identities=[str(i) for i in trust.get("identities") or []],
                issuer=str(trust["issuer"]) if trust.get("issuer") else None,
                trust_config_json=config["json"].encode() if config else None,
                source=source,
            )
        except (AttributeError, KeyError, TypeError, IndexError):
            raise VerificationFailed(
                f"{source} does not hold the trust inputs of a verification."
            ) from None
        if len(keys) > 1:
            raise VerificationFailed(f"{source} holds more than one public key.")
        return inputs


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
    root_fingerprint: str = ""  # sha256 of the DER root certificate the chain ends in


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


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the DER certificate: what `openssl x509 -fingerprint -sha256` prints."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _public_key(inputs: TrustInputs):
    try:
        key = serialization.load_pem_public_key(inputs.public_key_pem)
    except (ValueError, TypeError):
        raise UsageError(f"{inputs.source} is not a PEM public key.") from None
    _ec_hash(key, f"public key {inputs.source}")
    return key


def _why_key_failed(bundle: Bundle, hint: str, source: str) -> str:
    """The bundle's own claims, read only to explain a signature that did not verify."""
    if bundle.key_hint and bundle.key_hint.lower() != hint:
        return (
            f"{bundle.path} was signed by a different key: its key hint is {bundle.key_hint}, "
            f"{source} has {hint}."
        )
    return (
        f"{bundle.path}: the signature does not verify with public key {source}: the signed "
        "statement was edited after signing, or it was signed by a different key."
    )


def check_key(bundle: Bundle, inputs: TrustInputs) -> Signer:
    if inputs.public_key_pem is None:
        raise UsageError(f"{bundle.path} is signed with a key: pass --public-key PEM.")
    key = _public_key(inputs)
    hint = key_hint(key)
    try:
        _verify_envelope(key, bundle, f"public key {inputs.source}")
    except VerificationFailed:
        raise VerificationFailed(_why_key_failed(bundle, hint, inputs.source)) from None
    # Unsigned, but read by other tools: a hint or carried key that names another key is an
    # edited bundle, refused rather than passed on.
    if bundle.key_hint and bundle.key_hint.lower() != hint:
        raise VerificationFailed(
            f"{bundle.path}: the bundle's key hint {bundle.key_hint} does not name the key that "
            f"verified it ({hint}); the bundle was edited after signing."
        )
    if bundle.embedded_key_pem and _carried_key(bundle) != key:
        raise VerificationFailed(
            f"{bundle.path}: the public key the bundle carries is not the pinned key that "
            "verified it; the bundle was edited after signing."
        )
    return Signer("key", key_fingerprint=hint)


def _carried_key(bundle: Bundle):
    try:
        return serialization.load_pem_public_key(bundle.embedded_key_pem)
    except (ValueError, TypeError):
        return None


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *ext.get_values_for_type(x509.RFC822Name),
        *ext.get_values_for_type(x509.UniformResourceIdentifier),
    ]


def _anchors(inputs: TrustInputs) -> list[x509.Certificate]:
    anchors = []
    for pem in inputs.certificate_roots_pem:
        try:
            anchors += x509.load_pem_x509_certificates(pem)
        except ValueError:
            raise UsageError(
                f"{inputs.source}: a certificate chain file holds no PEM certificate."
            ) from None
    return anchors


def _require_code_signing(_policy, _cert, eku: x509.ExtendedKeyUsage) -> None:
    if ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        raise ValueError("the extended key usage does not include code signing")


def _allow_digital_signature(_policy, _cert, ku: x509.KeyUsage | None) -> None:
    if ku is not None and not ku.digital_signature:
        raise ValueError("the key usage does not include digitalSignature")


def _chain_verifier(anchors: list[x509.Certificate], when: datetime):
    """cryptography's path validation, with a code-signing leaf instead of a TLS client.

    CAs get the WebPKI profile (basic constraints, path length, name constraints, key
    usage keyCertSign), except that an authority key identifier may be absent, as in many
    private PKIs. The leaf must carry a code-signing extended key usage; its other
    extensions are the signer's business (the reference's own test leaf asserts cA)."""
    ca = verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.AuthorityKeyIdentifier, verification.Criticality.NON_CRITICAL, None
    )
    leaf = (
        verification.ExtensionPolicy.permit_all()
        .require_present(
            x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, _require_code_signing
        )
        .may_be_present(x509.KeyUsage, verification.Criticality.AGNOSTIC, _allow_digital_signature)
    )
    return (
        verification.PolicyBuilder()
        .store(verification.Store(anchors))
        .time(when)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=ca, ee_policy=leaf)
        .build_client_verifier()
    )


def _chain_error(e: Exception) -> str:
    """cryptography's message, without the certificate repr it appends."""
    text = str(e).removeprefix("validation failed: ")
    text = re.sub(r"Python extension validator failed: \w+: ", "", text)
    return re.sub(
        r"\s*\(encountered processing <Certificate\(subject=<Name\(([^)]*)\).*$",
        r" (at '\1')",
        text,
    )[:240]


def _chain_failure(bundle: Bundle, certs: list, inputs: TrustInputs, error: Exception) -> str:
    reason = _chain_error(error)
    if "no interior errors" in reason:
        top = certs[-1]
        return (
            f"{bundle.path}: the certificate chain does not lead to a trusted root: it ends at "
            f"'{top.subject.rfc4514_string()}' (issued by '{top.issuer.rfc4514_string()}'), "
            f"which no root in {inputs.source} issued."
        )
    reason = reason.removeprefix("candidates exhausted: ")
    return f"{bundle.path}: the certificate chain is refused: {reason}."


def check_certificate(bundle: Bundle, inputs: TrustInputs) -> Signer:
    if not inputs.certificate_roots_pem:
        raise UsageError(
            f"{bundle.path} is signed with a certificate: pass --certificate-chain with the "
            "root (and intermediate) certificates you trust."
        )
    anchors = _anchors(inputs)
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
    try:
        verified = _chain_verifier(anchors, now).verify(leaf, certs[1:])
    except verification.VerificationError as e:
        raise VerificationFailed(_chain_failure(bundle, certs, inputs, e)) from None
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
        root_fingerprint=certificate_fingerprint(verified.chain[-1]),
    )


def _within(cert: x509.Certificate, when: datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def _sigstore_verifier(inputs: TrustInputs):
    from sigstore.models import ClientTrustConfig, TrustedRoot
    from sigstore.verify import Verifier
    from sigstore_models.trustroot import v1 as trustroot_v1

    text = inputs.trust_config_json
    if text is None:
        return Verifier(trusted_root=ClientTrustConfig.production(offline=True).trusted_root)
    for load in (
        lambda: ClientTrustConfig.from_json(text.decode()).trusted_root,
        lambda: TrustedRoot(trustroot_v1.TrustedRoot.from_json(text)),
    ):
        try:
            return Verifier(trusted_root=load())
        except Exception:  # sigstore raises several types; try the other form
            continue
    raise UsageError(
        f"{inputs.source} is neither a Sigstore client trust config nor a trusted root."
    )


# sigstore's messages print whole Merkle proofs as Python bytes (~2,000 characters); these
# say what failed in one sentence.
SIGSTORE_FAILURES = (
    ("inclusion proof", "the Rekor inclusion proof does not match its checkpoint"),
    ("checkpoint", "the Rekor checkpoint is not signed by a log in the trusted root"),
    ("SET", "the Rekor inclusion promise (signed entry timestamp) does not verify"),
    ("Timestamp", "the RFC 3161 timestamp does not verify against the trusted root"),
    ("certificate", "the signing certificate does not chain to the trusted Fulcio root"),
    ("signature", "the DSSE signature does not verify with the signing certificate's key"),
)


def sigstore_reason(error: Exception) -> str:
    """One short sentence for a sigstore error, never its raw bytes."""
    text = str(error)
    for needle, sentence in SIGSTORE_FAILURES:
        if needle in text:
            return sentence
    text = re.sub(r"b'[^']*'|b\"[^\"]*\"", "<bytes>", text)
    return text[:200] + ("..." if len(text) > 200 else "")


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
    verifier = _sigstore_verifier(inputs)
    try:
        sb = SigstoreBundle.from_json(json.dumps(bundle.raw))
    except Exception as e:  # sigstore's parser raises many types
        raise VerificationFailed(
            f"{bundle.path} is not a valid Sigstore bundle: {sigstore_reason(e)}"
        ) from None
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
        raise VerificationFailed(
            f"{bundle.path}: Sigstore verification failed: {sigstore_reason(e)}."
        ) from None
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
