"""A CycloneDX 1.6 ML-BOM of the models the log shows as verified.

cyclonedx-python-lib builds the BOM and validates it, but has no model for `modelCard`
(REFERENCE.md section 5), so the card is added to the JSON before strict validation.
"""

from __future__ import annotations

import json
import re

from granite_ops_kit.errors import CheckFailed

VERIFIED = "artifact.verified"


def _verified_models(rows: list[dict]) -> list[dict]:
    """The newest successful verification of each (name, digest)."""
    latest: dict[tuple, dict] = {}
    for r in rows:
        if r["event"] == VERIFIED and r["outcome"] == "success":
            latest[(r["subject"]["name"], r["subject"].get("digest"))] = r
    return list(latest.values())


def _text(value) -> str | None:
    """A field of a record's details as text, or None: the details are whatever the record
    holds (a record appended by hand can hold anything), and the BOM takes only text."""
    return value if isinstance(value, str) and value else None


def _resources(details: dict) -> list[dict]:
    """The signed files the record lists, those with a name, an algorithm and a hex digest."""
    listed = details.get("resources")
    return [
        f
        for f in (listed if isinstance(listed, list) else [])
        if isinstance(f, dict)
        and _text(f.get("name"))
        and _text(f.get("algorithm"))
        and re.fullmatch(r"[0-9a-f]{32,128}", str(f.get("digest")))
    ]


def _attested(r: dict, key_pem: str | None) -> list:
    """Whether the key that signs this export also signed the verification's trust inputs
    (audit/attestation.py): a record appended to the store by hand says no."""
    from cyclonedx.model import Property

    from granite_ops_kit.audit import attestation, checkpoint

    if key_pem is None:
        return []
    fp = checkpoint.fingerprint(key_pem)
    said = "yes" if attestation.attested(r, key_pem) else "no"
    return [Property(name="gkit:verification:attested", value=f"{said} (key sha256 {fp})")]


def _component(r: dict, key_pem: str | None = None):
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.contact import OrganizationalEntity
    from cyclonedx.model.license import DisjunctiveLicense

    digest = r["subject"].get("digest") or ""
    model = r["details"].get("model")
    model = {k: _text(v) for k, v in model.items()} if isinstance(model, dict) else {}
    hashes = []
    if digest.startswith("sha256:") and len(digest) == 71:
        hashes = [HashType(alg=HashAlgorithm.SHA_256, content=digest[7:])]
    props = [
        Property(name="gkit:model:path", value=r["subject"]["name"]),
        Property(name="gkit:verification:record", value=str(r["seq"])),
        Property(name="gkit:verification:time", value=r["time"]),
        Property(name="gkit:verification:hash", value=r["hash"]),
    ]
    props += [
        Property(name=f"gkit:evidence:{k}", value=v) for k, v in sorted(r["evidence"].items())
    ]
    if r.get("policy_id"):
        props.append(Property(name="gkit:policy", value=r["policy_id"]))
    props += _attested(r, key_pem)
    license_id = model.get("license")
    return Component(
        name=model.get("name") or r["subject"]["name"].rsplit("/", 1)[-1],
        version=r["subject"].get("revision") or digest or None,
        type=ComponentType.MACHINE_LEARNING_MODEL,
        bom_ref=f"model-{r['seq']}",
        supplier=OrganizationalEntity(name=model["supplier"]) if model.get("supplier") else None,
        licenses=[DisjunctiveLicense(name=license_id)] if license_id else [],
        hashes=hashes,
        properties=props,
        components=[_file(r["seq"], f) for f in _resources(r["details"])],
    )


def _file(seq: int, resource: dict):
    """One signed file (or shard) of the model, with the digest the signature covers."""
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.component import Component, ComponentType

    algorithm = str(resource.get("algorithm", ""))
    known = {
        "sha256": HashAlgorithm.SHA_256,
        "blake2b": HashAlgorithm.BLAKE2B_512,
        "blake3": HashAlgorithm.BLAKE3,
    }
    alg = known.get(algorithm.split("-sharded-")[0])
    return Component(
        name=str(resource.get("name")),
        type=ComponentType.FILE,
        bom_ref=f"model-{seq}-file-{resource.get('name')}",
        hashes=[HashType(alg=alg, content=resource["digest"])] if alg else [],
    )


def _model_card(r: dict) -> dict:
    return {
        "modelParameters": {
            "task": "text-generation",
            "architectureFamily": "granite-4.0",
            "modelArchitecture": _text(r["details"].get("architecture"))
            or "GraniteMoeHybridForCausalLM",
        },
        "considerations": {
            "useCases": ["served by granite-ops-kit after signature and policy verification"],
        },
        "properties": [{"name": "gkit:controls", "value": " ".join(r["controls"])}],
    }


def ml_bom(rows: list[dict], key_pem: str | None = None) -> str:
    """The BOM as JSON text, validated strictly against CycloneDX 1.6; with `key_pem` (the
    export's signer), each model says whether that key attested its verification."""
    from cyclonedx.model.bom import Bom
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    models = _verified_models(rows)
    bom = Bom(components=[_component(r, key_pem) for r in models])
    data = json.loads(JsonV1Dot6(bom).output_as_string())
    cards = {f"model-{r['seq']}": _model_card(r) for r in models}
    for component in data.get("components", []):
        component["modelCard"] = cards[component["bom-ref"]]
    text = json.dumps(data, indent=2, sort_keys=True)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise CheckFailed(f"the ML-BOM does not validate against CycloneDX 1.6: {error}")
    return text
