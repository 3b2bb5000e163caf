"""What a verified model says about itself, for the ML-BOM: name, licence, supplier.

Read from the Hugging Face model card's YAML front matter (`license:`) with a bounded read,
after the signature has verified; these are the vendor's declarations (ISO/IEC 42001 A.7.5
calls them so), not facts gkit checked.
"""

from __future__ import annotations

from pathlib import Path

from granite_runtime.spec import bounded_read

MAX_CARD_BYTES = 1 << 20
LICENSE_KEYS = ("license", "license_name")


def _front_matter(text: str) -> dict[str, str]:
    """The flat `key: value` lines of a README's leading `---` block (no YAML library)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out = {}
    for line in lines[1:200]:
        if line.strip() == "---":
            break
        key, sep, value = line.partition(":")
        if sep and not line.startswith((" ", "\t", "-")):
            out[key.strip()] = value.strip().strip("'\"")
    return out


def declared(model_path: Path, signer: dict, statement_name: str) -> dict:
    """Name, licence and supplier as the model card and the signature declare them."""
    card = {}
    readme = model_path / "README.md" if model_path.is_dir() else None
    if readme is not None:
        try:
            text = bounded_read.read_bytes(readme, MAX_CARD_BYTES, follow_links=False)
            card = _front_matter(text.decode("utf-8", errors="replace"))
        except bounded_read.UnsafeInput:
            card = {}
    license_id = next((card[k] for k in LICENSE_KEYS if card.get(k)), None)
    identities = signer.get("identities") or []
    if identities and "@" in identities[0]:
        supplier = identities[0].rsplit("@", 1)[1]
    elif identities:
        supplier = identities[0]
    else:
        supplier = f"key sha256:{signer.get('key_fingerprint', '')[:16]}"
    return {
        "name": statement_name or model_path.resolve().name,
        "license": license_id,
        "supplier": supplier,
    }
