"""Options shared by many commands, declared once (typer `Annotated` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from granite_ops_kit.supply.trust import TrustInputs

JSON_OPTION = typer.Option(
    False, "--json", help="Print one machine-readable JSON object on stdout, also on failure."
)

# The pinned trust inputs: what `gkit verify` checks a signature against, and what the
# deploy gate and `gkit build` check it against again (else the ones `gkit verify` recorded).
PublicKey = Annotated[Path | None, typer.Option(help="PEM public key, for key signatures.")]
CertificateChain = Annotated[
    list[Path] | None,
    typer.Option(
        help="PEM file(s) of the root (and intermediate) CAs you trust, for certificate "
        "signatures. Repeatable."
    ),
]
Identity = Annotated[
    list[str] | None,
    typer.Option(
        help="Signer identity that must appear in the certificate (SAN email or URI). "
        "Repeatable: any one matches."
    ),
]
Issuer = Annotated[
    str | None,
    typer.Option(
        help="OIDC issuer a Sigstore certificate must name, e.g. "
        "https://sigstore.verify.ibm.com/oauth2."
    ),
]
TrustConfig = Annotated[
    Path | None,
    typer.Option(
        help="Sigstore client trust config (or trusted root) JSON for a private Sigstore; "
        "default: the public-good root shipped with sigstore, offline."
    ),
]
DeployPolicy = Annotated[
    Path | None,
    typer.Option(
        help="Deploy rules (JSON): require_verification, require_approval (role, signed, "
        "approvers with key fingerprints and roles); default: the shipped policies/deploy.json."
    ),
]
POLICY_HELP = (
    "Policy name (default, ibm-granite) or a policy JSON file; a policy may pin signers "
    "(key and root fingerprints, identities)."
)


def trust_inputs(
    public_key: Path | None,
    certificate_chain: list[Path] | None,
    identity: list[str] | None,
    issuer: str | None,
    trust_config: Path | None,
) -> TrustInputs:
    """Read the trust files now (bounded), so every later check uses these bytes."""
    from granite_ops_kit.supply.trust import TrustInputs

    return TrustInputs.from_files(
        public_key, list(certificate_chain or []), list(identity or []), issuer, trust_config
    )
