"""The demo-model presets: two miniatures for tests and the catalog's real shapes.

The miniatures keep every structural feature of their full-size model (the layer pattern
mixing Mamba and attention, MoE with a shared MLP, the multipliers, NoPE or RoPE) at a size
that loads in milliseconds. Two choices differ from a real checkpoint on purpose:
- the output head is untied and the weights are drawn at a larger scale, because with tied
  embeddings and Granite's small residual multiplier a random model's greedy choice is
  nearly always the input token, which makes generation tests prove nothing (REFERENCE.md 3b);
- the Mamba chunk is 32 tokens so a 100-token prompt exercises the multi-chunk scan.
"""

from __future__ import annotations

from dataclasses import dataclass

from granite_ops_kit import catalog
from granite_ops_kit.errors import UsageError

TINY_VOCAB = 1024


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: dict
    init_std: float
    dtype: str


def _tiny_hybrid() -> Preset:
    config = catalog.load_config("granite-4.0-h-tiny")
    pattern = ["mamba", "mamba", "attention", "mamba", "mamba", "mamba", "attention", "mamba"]
    config.update(
        hidden_size=128,
        num_hidden_layers=len(pattern),
        layer_types=pattern,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_multiplier=1 / 32,
        intermediate_size=64,
        shared_intermediate_size=128,
        num_local_experts=8,
        num_experts_per_tok=2,
        mamba_n_heads=8,
        mamba_d_head=32,
        mamba_d_state=16,
        mamba_chunk_size=32,
        vocab_size=TINY_VOCAB,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    return Preset(
        "tiny-hybrid",
        "granite-4.0-h-tiny in miniature: 6 Mamba-2 + 2 attention "
        "layers, 8 experts (top-2) with a shared MLP",
        config,
        0.08,
        "bfloat16",
    )


def _tiny_dense() -> Preset:
    config = catalog.load_config("granite-4.0-micro")
    config.update(
        hidden_size=128,
        num_hidden_layers=4,
        layer_types=["attention"] * 4,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_multiplier=1 / 32,
        intermediate_size=256,
        shared_intermediate_size=256,
        mamba_n_heads=8,
        mamba_d_head=32,
        mamba_d_state=16,
        mamba_chunk_size=32,
        rope_theta=10000.0,
        vocab_size=TINY_VOCAB,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    return Preset(
        "tiny-dense",
        "granite-4.0-micro in miniature: 4 attention layers with RoPE and a dense SwiGLU MLP",
        config,
        0.08,
        "bfloat16",
    )


MINIATURES = {"tiny-hybrid": _tiny_hybrid, "tiny-dense": _tiny_dense}


def preset_names() -> list[str]:
    return [*MINIATURES, *catalog.catalog_names()]


def load_preset(name: str) -> Preset:
    """A preset by name; catalog models also answer to their short names (`h-micro`)."""
    if name in MINIATURES:
        return MINIATURES[name]()
    resolved = catalog.resolve_name(name)
    if resolved is None:
        raise UsageError(f"unknown preset '{name}'; choose one of: {', '.join(preset_names())}.")
    config = catalog.load_config(resolved)
    return Preset(
        resolved, f"{resolved} at its real shape (random weights)", config, 0.02, "bfloat16"
    )
