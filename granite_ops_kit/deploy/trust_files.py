"""The trust inputs a deployed pod verifies its model with, as files and arguments.

The deploy gate verified the model with pinned inputs (given, or recorded by `gkit verify`);
the pod's verify initContainer must use the same ones, so they travel in the release's own
ConfigMap: public keys, certificate roots, a Sigstore trusted root (never a private key),
with the identities and issuer as arguments.
"""

from __future__ import annotations

TRUST_DIR = "/etc/gkit/trust"


def for_pod(trust: dict) -> tuple[dict[str, str], list[str]]:
    """(ConfigMap data, gkit verify arguments) for a verification record's `trust`."""
    files: dict[str, str] = {}
    args: list[str] = []
    for key in (trust.get("public_keys") or [])[:1]:  # gkit verify takes one key
        name = f"signer-{key['fingerprint'][:12]}.pub"
        files[name] = key["pem"]
        args += ["--public-key", f"{TRUST_DIR}/{name}"]
    roots = trust.get("certificate_roots") or []
    if roots:
        files["certificate-roots.pem"] = "".join(r["pem"] for r in roots)
        args += ["--certificate-chain", f"{TRUST_DIR}/certificate-roots.pem"]
    config = trust.get("trust_config")
    if config:
        files["trust-config.json"] = config["json"]
        args += ["--trust-config", f"{TRUST_DIR}/trust-config.json"]
    for identity in trust.get("identities") or []:
        args += ["--identity", identity]
    if trust.get("issuer"):
        args += ["--issuer", trust["issuer"]]
    return files, args
