"""Where a model's shape comes from: a checkpoint, a config.json, the catalog, or the Hub."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from granite_ops_kit import catalog
from granite_ops_kit.errors import ModelFormatError, UsageError
from granite_runtime.spec import bounded_read

# Dense siblings of the hybrids (REFERENCE.md section 1); the MoE hybrids have none.
SIBLINGS = {
    "granite-4.0-h-micro": "granite-4.0-micro",
    "granite-4.0-h-1b": "granite-4.0-1b",
    "granite-4.0-h-350m": "granite-4.0-350m",
}


@dataclass(frozen=True)
class ModelShape:
    name: str
    source: str  # "checkpoint", "config", "catalog" or "hub"
    config: dict


MAX_CONFIG_BYTES = 4 << 20


def _read(path: Path, name: str, source: str) -> ModelShape:
    try:
        config = bounded_read.read_json(path, MAX_CONFIG_BYTES, what="config")
    except bounded_read.UnsafeInput as bad:
        raise UsageError(f"cannot read a config.json: {bad.message}") from None
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path}: a config.json is a JSON object; this one is not.")
    return ModelShape(name, source, config)


def _from_hub(repo_id: str) -> ModelShape:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(repo_id, "config.json")
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as bad:
        raise UsageError(
            f"could not get config.json of '{repo_id}' from the Hugging Face Hub "
            f"({type(bad).__name__}); offline, it must be in the local cache "
            "(HF_HUB_OFFLINE=1), or pass a local config.json."
        ) from None
    return _read(Path(path), repo_id, "hub")


def resolve(model: str) -> ModelShape:
    """A directory with config.json, a config.json file, a catalog name, or a Hub repo id."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"{path}: the directory has no config.json.")
        return _read(path / "config.json", path.resolve().name, "checkpoint")
    if path.is_file():
        return _read(path, path.stem if path.name != "config.json" else path.parent.name, "config")
    name = catalog.resolve_name(model)
    if name:
        return ModelShape(name, "catalog", catalog.load_config(name))
    if model.count("/") == 1 and not model.startswith((".", "/")):
        return _from_hub(model)
    raise UsageError(
        f"'{model}' is not a directory, a config.json, a catalog model "
        f"({', '.join(catalog.catalog_names())}) or a Hub repo id (owner/name)."
    )


def comparison_shape(shape: ModelShape) -> tuple[str, dict]:
    """The dense sibling when IBM ships one, else an all-attention twin of the same shape."""
    sibling = SIBLINGS.get(catalog.resolve_name(shape.name) or "")
    if sibling:
        return sibling, catalog.load_config(sibling)
    config = dict(shape.config)
    layers = len(config.get("layer_types") or config.get("layers_block_type") or [])
    config["layer_types"] = ["attention"] * layers
    config.pop("layers_block_type", None)
    return f"{shape.name} as all-attention twin", config
