"""The memory model: bytes of weights, KV cache and Mamba state for a Granite config.

Pure Python (no torch), shared by the runtime, which allocates its pools from these numbers,
and by `gkit size`, which predicts them: one formula, so prediction and allocation agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from granite_runtime.config import GraniteConfig

DTYPE_BYTES = {
    "float32": 4,
    "fp32": 4,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "fp16": 2,
    "fp8": 1,
    "float8": 1,
    "int8": 1,
}


def dtype_bytes(name: str) -> int:
    return DTYPE_BYTES[name.lower().removeprefix("torch.")]


def parameter_count(c: GraniteConfig, active_only: bool = False) -> int:
    """Parameters in the checkpoint; `active_only` counts top-k experts instead of all."""
    h = c.hidden_size
    total = c.vocab_size * h * (1 if c.tie_word_embeddings else 2) + h  # embeddings, final norm
    attn = h * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    if c.attention_bias:
        attn += c.head_dim * (c.num_heads + 2 * c.num_kv_heads) + h
    proj = c.mamba_inner + c.mamba_conv_dim + c.mamba_heads
    mamba = h * proj + c.mamba_conv_dim * c.mamba_conv + 3 * c.mamba_heads + c.mamba_inner
    mamba += c.mamba_inner * h
    mamba += c.mamba_conv_dim if c.mamba_conv_bias else 0
    mamba += (proj + h) if c.mamba_proj_bias else 0
    experts = c.top_k if active_only else c.num_experts
    mlp = 3 * h * c.shared_size
    if c.num_experts:
        mlp += c.num_experts * h + experts * 3 * h * c.expert_size
    total += len(c.attention_layers) * attn + len(c.mamba_layers) * mamba
    return total + c.num_layers * (mlp + 2 * h)


def kv_bytes_per_token(c: GraniteConfig, kv_dtype: str = "bfloat16") -> int:
    """Keys and values of every attention layer for one token."""
    return 2 * len(c.attention_layers) * c.num_kv_heads * c.head_dim * dtype_bytes(kv_dtype)


def state_bytes_per_sequence(
    c: GraniteConfig, state_dtype: str = "bfloat16", conv_columns: int | None = None
) -> int:
    """Mamba conv and SSM state of every Mamba layer for one sequence (constant in length).

    gkit and vLLM keep d_conv - 1 conv columns; transformers keeps d_conv (pass it).
    """
    cols = c.mamba_conv - 1 if conv_columns is None else conv_columns
    per_layer = c.mamba_conv_dim * cols + c.mamba_heads * c.mamba_head_dim * c.mamba_state
    return len(c.mamba_layers) * per_layer * dtype_bytes(state_dtype)


@dataclass(frozen=True)
class PoolPlan:
    """What the runtime allocates for its caches: one slot per concurrent sequence."""

    num_slots: int
    max_len: int
    kv_bytes: int
    state_bytes: int

    @property
    def total(self) -> int:
        return self.kv_bytes + self.state_bytes


def pool_plan(
    c: GraniteConfig,
    num_slots: int,
    max_len: int,
    kv_dtype: str = "bfloat16",
    state_dtype: str = "bfloat16",
) -> PoolPlan:
    return PoolPlan(
        num_slots,
        max_len,
        num_slots * max_len * kv_bytes_per_token(c, kv_dtype),
        num_slots * state_bytes_per_sequence(c, state_dtype),
    )
