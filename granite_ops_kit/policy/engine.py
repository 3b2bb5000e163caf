"""Load a policy by name or file and evaluate it with a real Rego engine (regopy).

A policy is JSON data (who may sign, which formats, symlinks, certificate validity) and a
Rego module of rules over the facts verification established. Shipped policies live in
`policies/` (installed as granite_ops_kit/policies); `--policy FILE` takes any JSON file of
the same shape, optionally with its own `"rego"` module path next to it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from granite_ops_kit.errors import UsageError
from granite_runtime.spec import bounded_read

REQUIRED_KEYS = ("id", "methods", "weight_formats")
SIGNER_LISTS = ("public_keys", "certificate_roots", "certificate_identities")
MAX_POLICY_BYTES = 1 << 20


def policies_dir() -> Path:
    """The shipped policies: the source tree's policies/ or the installed copy."""
    source = Path(__file__).resolve().parents[2] / "policies"
    if (source / "verify.rego").exists():
        return source
    return Path(__file__).resolve().parents[1] / "policies"


@dataclass
class Policy:
    id: str
    path: Path
    data: dict
    rego_path: Path
    sha256: str  # of the JSON and the Rego text together: what the audit record cites
    rego: str  # the module's text, as read (and hashed) once

    @property
    def accept_signing_time_validity(self) -> bool:
        return bool(self.data.get("accept_signing_time_validity"))

    @property
    def allow_symlinks(self) -> bool:
        return bool(self.data.get("allow_symlinks"))

    @property
    def sigstore_issuer(self) -> str | None:
        return (self.data.get("sigstore") or {}).get("issuer")

    @property
    def sigstore_identities(self) -> list[str]:
        return list((self.data.get("sigstore") or {}).get("identities") or [])


@dataclass
class Decision:
    allow: bool
    deny: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def available() -> list[str]:
    return sorted(
        p.stem for p in policies_dir().glob("*.json") if "methods" in json.loads(p.read_text())
    )


def load(name_or_file: str) -> Policy:
    path = Path(name_or_file)
    if not (path.suffix == ".json" or path.exists()):
        path = policies_dir() / f"{name_or_file}.json"
        if not path.exists():
            raise UsageError(
                f"no policy named '{name_or_file}'; shipped policies: "
                f"{', '.join(available())} (or pass a JSON file)."
            )
    raw = _read(path, "policy file")
    try:
        data = bounded_read.parse_json(raw, f"policy file {path}")
    except bounded_read.UnsafeInput as e:
        raise UsageError(e.message) from None
    if not isinstance(data, dict):
        raise UsageError(f"policy file {path} is not a JSON object.")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise UsageError(f"policy file {path} lacks {', '.join(missing)}.")
    _normalise(data, path)
    if not isinstance(data.get("rego") or "", str):
        raise UsageError(f"policy file {path}: 'rego' must be the path of a Rego module.")
    rego = (path.parent / data["rego"]) if data.get("rego") else policies_dir() / "verify.rego"
    module = _read(rego, "Rego module")
    try:
        text = module.decode()
    except UnicodeDecodeError:
        raise UsageError(f"Rego module {rego} is not UTF-8 text.") from None
    # the bytes parsed are the bytes hashed: the record cites the policy that ran
    digest = hashlib.sha256(raw + b"\n" + module).hexdigest()
    return Policy(data["id"], path, data, rego, digest, text)


def _read(path: Path, what: str) -> bytes:
    try:
        return bounded_read.read_bytes(path, MAX_POLICY_BYTES, what=what)
    except bounded_read.UnsafeInput as e:
        raise UsageError(e.message) from None


def fingerprint(value: str) -> str:
    """A pinned fingerprint as a policy may write it ('sha256:ab..', 'AB:CD:..', bare hex),
    as the verifier reports it: bare lower-case hex."""
    return re.sub(r"[^0-9a-f]", "", value.lower().removeprefix("sha256:"))


def _normalise(data: dict, path: Path) -> None:
    """Defaults for optional keys, and pins in one spelling, so the Rego rules compare
    like with like."""
    sigstore = data.setdefault("sigstore", {})
    signers = data.setdefault("signers", {})
    if not isinstance(sigstore, dict) or not isinstance(signers, dict):
        raise UsageError(f"policy file {path}: 'sigstore' and 'signers' must be objects.")
    sigstore.setdefault("issuer", None)
    lists = [(sigstore, "identities"), *((signers, k) for k in SIGNER_LISTS)]
    for holder, key in lists:
        value = holder.setdefault(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"policy file {path}: '{key}' must be a list of strings.")
    for key in ("public_keys", "certificate_roots"):
        signers[key] = [fingerprint(v) for v in signers[key]]
    for key in ("allow_symlinks", "accept_signing_time_validity", "require_weight_file"):
        data.setdefault(key, False)
    data.setdefault("allow_legacy_predicate", True)


def evaluate(policy: Policy, facts: dict) -> Decision:
    """Run the policy's Rego rules over `facts`; the result always carries its reasons."""
    from regopy import Interpreter

    interp = Interpreter()
    interp.add_module("gkit_verify", policy.rego)
    interp.add_data_json(json.dumps({"policy": policy.data}))
    interp.set_input_term(json.dumps(facts))
    out = interp.query("d := data.gkit.verify.decision")
    text = str(out)
    if not out.ok() or not text.startswith("{"):
        raise UsageError(f"policy {policy.path} could not be evaluated: {text}")
    result = json.loads(text)["bindings"]["d"]
    return Decision(bool(result["allow"]), sorted(result["deny"]), sorted(result["reasons"]))
