"""Write a deterministic Granite checkpoint in Hugging Face layout.

The directory is built under a temporary name beside the destination and renamed into place
at the end, so an interrupted run never leaves a half-written model where a later step
(signing, serving) would pick it up.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from granite_ops_kit.demo import tokenizer as tok
from granite_ops_kit.demo.presets import load_preset
from granite_ops_kit.demo.safetensors_writer import DTYPES, TensorEntry, write_safetensors
from granite_ops_kit.demo.weights import tensor_entries
from granite_ops_kit.errors import UsageError

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # the Hugging Face default, 5 GB
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass
class DemoModel:
    """What was written: enough for the CLI to report and for tests to check."""

    path: Path
    preset: str
    seed: int
    dtype: str
    parameters: int
    weight_bytes: int
    files: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "preset": self.preset,
            "seed": self.seed,
            "dtype": self.dtype,
            "parameters": self.parameters,
            "weight_bytes": self.weight_bytes,
            "files": self.files,
        }


def plan_shards(entries: list[TensorEntry], dtype: str, max_bytes: int) -> list[list[TensorEntry]]:
    """Group tensors in model order into shards of at most `max_bytes` (one tensor may exceed)."""
    size = DTYPES[dtype][1]
    shards: list[list[TensorEntry]] = [[]]
    used = 0
    for entry in entries:
        nbytes = entry.numel * size
        if shards[-1] and used + nbytes > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(entry)
        used += nbytes
    return shards


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_weights(
    root: Path,
    entries: list[TensorEntry],
    dtype: str,
    max_bytes: int,
    on_bytes: Callable[[int], None] | None,
) -> list[str]:
    shards = plan_shards(entries, dtype, max_bytes)
    if len(shards) == 1:
        write_safetensors(root / SINGLE_FILE, shards[0], dtype, on_bytes=on_bytes)
        return [SINGLE_FILE]
    names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    weight_map: dict[str, str] = {}
    total = 0
    for name, shard in zip(names, shards, strict=True):
        total += write_safetensors(root / name, shard, dtype, on_bytes=on_bytes)
        weight_map.update({entry.name: name for entry in shard})
    _write_json(root / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return [*names, INDEX_FILE]


def _prepare_destination(dest: Path, force: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a directory.")
    if dest.exists() and any(dest.iterdir()) and not force:
        raise UsageError(
            f"{dest} already exists and is not empty; choose another directory "
            "or pass --force to replace it."
        )
    if not dest.parent.exists():
        raise UsageError(f"the parent directory {dest.parent} does not exist.")


def _swap_into_place(staging: Path, dest: Path) -> None:
    if dest.exists():
        trash = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(trash)
        staging.rename(dest)
        shutil.rmtree(trash)
    else:
        staging.rename(dest)


def write_demo_model(
    dest: Path,
    preset: str = "tiny-hybrid",
    seed: int = 0,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    force: bool = False,
    overrides: dict | None = None,
    on_start: Callable[[int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> DemoModel:
    """Write the preset's checkpoint to `dest`; `on_start(total_bytes)` then `on_bytes(n)`.

    `overrides` replaces config keys (tests use it for shapes no preset has, such as
    n_groups > 1); the weights follow the overridden shape.
    """
    spec = load_preset(preset)
    dtype = dtype or spec.dtype
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}.")
    dest = dest.resolve()
    _prepare_destination(dest, force)

    tok_json = tok.tokenizer_json(min(spec.config["vocab_size"], tok.MAX_VOCAB))
    ids = tok.special_token_ids(tok_json)
    config = {**spec.config, **(overrides or {}), "torch_dtype": dtype}
    # The demo tokenizer is not Granite's 100k one: point the config's special ids at ours.
    config.update(
        bos_token_id=ids[tok.END_OF_TEXT],
        eos_token_id=ids[tok.END_OF_TEXT],
        pad_token_id=ids[tok.PAD],
    )
    entries = tensor_entries(config, spec.init_std, seed)
    parameters = sum(e.numel for e in entries)
    if on_start:
        on_start(parameters * DTYPES[dtype][1])

    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        files = _write_weights(staging, entries, dtype, max_shard_bytes, on_bytes)
        _write_json(staging / "config.json", config)
        _write_json(
            staging / "generation_config.json",
            {
                "bos_token_id": config["bos_token_id"],
                "eos_token_id": config["eos_token_id"],
                "pad_token_id": config["pad_token_id"],
            },
        )
        (staging / "tokenizer.json").write_text(tok_json, encoding="utf-8")
        _write_json(
            staging / "tokenizer_config.json",
            tok.tokenizer_config(config["max_position_embeddings"]),
        )
        os.chmod(staging, 0o755)
        _swap_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files += ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    return DemoModel(
        dest, spec.name, seed, dtype, parameters, parameters * DTYPES[dtype][1], sorted(files)
    )
