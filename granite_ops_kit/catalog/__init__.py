"""The Granite 4.0 family as data: each model's config.json, by catalog name.

The configs are IBM's published shapes (see shared/reference/granite-4.0-configs and its
PROVENANCE.md). Sizing, the demo-model presets and the GPU benchmarks all read them here, so
a model's shape is written down once.
"""

from __future__ import annotations

import json
from importlib import resources

from granite_ops_kit.errors import UsageError

PREFIX = "granite-4.0-"


def catalog_names() -> list[str]:
    """Every catalog name, e.g. `granite-4.0-h-micro`, sorted."""
    root = resources.files(__name__)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def resolve_name(name: str) -> str | None:
    """Accept `granite-4.0-h-micro`, `h-micro` or `ibm-granite/granite-4.0-h-micro`."""
    base = name.rsplit("/", 1)[-1].lower()
    for candidate in (base, PREFIX + base):
        if candidate in catalog_names():
            return candidate
    return None


def load_config(name: str) -> dict:
    """The config.json of a catalog model; a usage error lists the valid names."""
    resolved = resolve_name(name)
    if resolved is None:
        raise UsageError(
            f"'{name}' is not a Granite 4.0 catalog model; known: {', '.join(catalog_names())}."
        )
    text = resources.files(__name__).joinpath(resolved + ".json").read_text("utf-8")
    return json.loads(text)
