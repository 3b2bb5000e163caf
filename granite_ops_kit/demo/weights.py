"""Which tensors a Granite 4.0 checkpoint holds, and deterministic values for them.

Names and shapes follow the Hugging Face Hub layout of `granitemoehybrid` checkpoints (the
one transformers converts on load: `block_sparse_moe.input_linear.weight` and friends).
Values are drawn per tensor from a generator seeded by (seed, tensor name), so a tensor's
bytes do not depend on which other tensors exist or in which order they are written, and a
tensor is produced a block at a time to keep memory flat on the real shapes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from granite_ops_kit.demo.safetensors_writer import TensorEntry

BLOCK_ELEMENTS = 1 << 23  # 8M floats (32 MB) per block


@dataclass(frozen=True)
class Init:
    """How to fill a tensor: `kind` is normal, uniform, ones_noise, a_log or dt_bias."""

    kind: str
    scale: float = 0.0


def layer_types(config: dict) -> list[str]:
    """The layer pattern as 'mamba'/'attention', whichever spelling the config uses."""
    spelling = {
        "mamba": "mamba",
        "linear_attention": "mamba",
        "attention": "attention",
        "full_attention": "attention",
    }
    raw = config.get("layer_types") or config.get("layers_block_type")
    if raw is None:
        return ["mamba"] * config["num_hidden_layers"]
    return [spelling[t] for t in raw]


def _mamba_tensors(config: dict, prefix: str) -> list[tuple[str, tuple[int, ...], Init]]:
    hidden = config["hidden_size"]
    inner = int(config["mamba_expand"] * hidden)
    heads = config["mamba_n_heads"]
    conv_dim = inner + 2 * config["mamba_n_groups"] * config["mamba_d_state"]
    k = config["mamba_d_conv"]
    conv_bound = 1.0 / np.sqrt(k)  # PyTorch's default for a depthwise conv (fan_in = k)
    std = config["_init_std"]
    out = [
        (f"{prefix}.in_proj.weight", (inner + conv_dim + heads, hidden), Init("normal", std)),
        (f"{prefix}.conv1d.weight", (conv_dim, 1, k), Init("uniform", conv_bound)),
        (f"{prefix}.dt_bias", (heads,), Init("dt_bias")),
        (f"{prefix}.A_log", (heads,), Init("a_log")),
        (f"{prefix}.D", (heads,), Init("ones_noise", 0.1)),
        (f"{prefix}.norm.weight", (inner,), Init("ones_noise", 0.1)),
        (f"{prefix}.out_proj.weight", (hidden, inner), Init("normal", std)),
    ]
    if config.get("mamba_conv_bias", True):
        out.append((f"{prefix}.conv1d.bias", (conv_dim,), Init("uniform", conv_bound)))
    if config.get("mamba_proj_bias", False):
        out.append((f"{prefix}.in_proj.bias", (inner + conv_dim + heads,), Init("normal", std)))
        out.append((f"{prefix}.out_proj.bias", (hidden,), Init("normal", std)))
    return out


def _attention_tensors(config: dict, prefix: str) -> list[tuple[str, tuple[int, ...], Init]]:
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv = config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    std = config["_init_std"]
    out = [
        (f"{prefix}.q_proj.weight", (heads * head_dim, hidden), Init("normal", std)),
        (f"{prefix}.k_proj.weight", (kv * head_dim, hidden), Init("normal", std)),
        (f"{prefix}.v_proj.weight", (kv * head_dim, hidden), Init("normal", std)),
        (f"{prefix}.o_proj.weight", (hidden, heads * head_dim), Init("normal", std)),
    ]
    if config.get("attention_bias", False):
        for name, rows in (("q", heads), ("k", kv), ("v", kv)):
            out.append((f"{prefix}.{name}_proj.bias", (rows * head_dim,), Init("normal", std)))
        out.append((f"{prefix}.o_proj.bias", (hidden,), Init("normal", std)))
    return out


def _mlp_tensors(config: dict, prefix: str) -> list[tuple[str, tuple[int, ...], Init]]:
    hidden = config["hidden_size"]
    std = config["_init_std"]
    shared = config["shared_intermediate_size"]
    out = [
        (f"{prefix}.shared_mlp.input_linear.weight", (2 * shared, hidden), Init("normal", std)),
        (f"{prefix}.shared_mlp.output_linear.weight", (hidden, shared), Init("normal", std)),
    ]
    experts = config.get("num_local_experts", 0)
    if experts > 0:
        inter = config["intermediate_size"]
        moe = f"{prefix}.block_sparse_moe"
        out += [
            (f"{moe}.router.layer.weight", (experts, hidden), Init("normal", std)),
            (f"{moe}.input_linear.weight", (experts, 2 * inter, hidden), Init("normal", std)),
            (f"{moe}.output_linear.weight", (experts, hidden, inter), Init("normal", std)),
        ]
    return out


def tensor_specs(config: dict, init_std: float) -> list[tuple[str, tuple[int, ...], Init]]:
    """Every tensor of the checkpoint in model order (embeddings, layers, final norm, head)."""
    config = {**config, "_init_std": init_std}
    hidden = config["hidden_size"]
    specs = [
        ("model.embed_tokens.weight", (config["vocab_size"], hidden), Init("normal", init_std))
    ]
    for i, kind in enumerate(layer_types(config)):
        prefix = f"model.layers.{i}"
        specs.append((f"{prefix}.input_layernorm.weight", (hidden,), Init("ones_noise", 0.1)))
        if kind == "mamba":
            specs += _mamba_tensors(config, f"{prefix}.mamba")
        else:
            specs += _attention_tensors(config, f"{prefix}.self_attn")
        specs.append(
            (f"{prefix}.post_attention_layernorm.weight", (hidden,), Init("ones_noise", 0.1))
        )
        specs += _mlp_tensors(config, prefix)
    specs.append(("model.norm.weight", (hidden,), Init("ones_noise", 0.1)))
    if not config.get("tie_word_embeddings", True):
        specs.append(("lm_head.weight", (config["vocab_size"], hidden), Init("normal", init_std)))
    return specs


def _generator(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _blocks(name: str, numel: int, init: Init, seed: int) -> Iterator[np.ndarray]:
    rng = _generator(seed, name)
    done = 0
    while done < numel:
        n = min(BLOCK_ELEMENTS, numel - done)
        yield _draw(rng, n, init)
        done += n


def _draw(rng: np.random.Generator, n: int, init: Init) -> np.ndarray:
    if init.kind == "normal":
        out = rng.standard_normal(n, dtype=np.float32)
        out *= np.float32(init.scale)
        return out
    if init.kind == "uniform":
        return rng.uniform(-init.scale, init.scale, n).astype(np.float32)
    if init.kind == "ones_noise":
        return (1.0 + init.scale * rng.standard_normal(n)).astype(np.float32)
    if init.kind == "a_log":
        # Mamba-2's initialisation: A ~ U[1, 16], stored as log(A).
        return np.log(rng.uniform(1.0, 16.0, n)).astype(np.float32)
    if init.kind == "dt_bias":
        # dt ~ log-uniform in [1e-3, 1e-1], stored as softplus^-1(dt) as Mamba-2 does.
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), n))
        return (dt + np.log(-np.expm1(-dt))).astype(np.float32)
    raise ValueError(f"unknown init {init.kind}")


def tensor_entries(config: dict, init_std: float, seed: int) -> list[TensorEntry]:
    """The checkpoint's tensors as lazily generated entries for the safetensors writer."""
    entries = []
    for name, shape, init in tensor_specs(config, init_std):
        numel = int(np.prod(shape))
        entries.append(TensorEntry(name, shape, partial(_blocks, name, numel, init, seed)))
    return entries
