"""The memory model: bytes of weights, KV cache and Mamba state for a Granite config.

Pure Python (no torch), shared by the runtime, which allocates its pools from these numbers,
and by `gkit size`, which predicts them: one formula, so prediction and allocation agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from granite_runtime.spec.config import GraniteConfig

# Tokens of one prompt the engine runs per step (a chunk), and so the largest prefill
# workspace: `gkit serve --prefill-chunk`, which sizing counts with the same default. 2048
# over 512 on an H100 (h-micro, 64 clients, chunk graphs): 64 x 2048 TTFT p99 3.10 s where
# 512 gave 5.46, and 64 x 512/256 served 4,979 tok/s where 512 gave 4,287; a running
# stream's ITL p99 while others prefill rises from 24 to 51 ms (bench/NOTES.md).
PREFILL_CHUNK = 2048

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


# ---- tensor parallelism and quantized weights -------------------------------------------
# Under tensor parallelism over `tp` GPUs, gkit (like vLLM) shards attention heads, Mamba
# heads, MLP and expert columns and the vocabulary; it replicates norms and the MoE router,
# key/value heads when there are fewer than `tp`, and the Mamba B/C projections when there
# are fewer groups than `tp`.


def _per_gpu(count: int, tp: int) -> float:
    """How many of `count` heads or groups one GPU holds: a share, or all when too few."""
    return count / tp if count >= tp and count % tp == 0 else count


def weight_bytes_per_gpu(
    c: GraniteConfig, bits_per_weight: float, tp: int = 1, norm_bytes: int = 2
) -> int:
    """Weights on one GPU; matrices at `bits_per_weight`, 1-D tensors at `norm_bytes`."""
    h, mat = c.hidden_size, bits_per_weight / 8
    vocab = c.vocab_size * h * (1 if c.tie_word_embeddings else 2) / tp
    kv = _per_gpu(c.num_kv_heads, tp)
    attn = h * c.head_dim * (2 * c.num_heads / tp + 2 * kv)
    groups = _per_gpu(c.mamba_groups, tp)
    bc = 2 * groups * c.mamba_state
    inner = c.mamba_inner / tp
    mamba = h * (2 * inner + bc + c.mamba_heads / tp) + inner * h
    mamba_small = (inner + bc) * (c.mamba_conv + c.mamba_conv_bias) + 3 * c.mamba_heads / tp
    mamba_small += inner  # the gated norm's weight
    mlp = 3 * h * c.shared_size / tp + c.num_experts * 3 * h * c.expert_size / tp
    router = c.num_experts * h
    matrices = (
        vocab + len(c.attention_layers) * attn + len(c.mamba_layers) * mamba + c.num_layers * mlp
    )
    small = len(c.mamba_layers) * mamba_small + c.num_layers * (2 * h + router) + h
    return int(matrices * mat + small * norm_bytes)


def kv_bytes_per_token_per_gpu(c: GraniteConfig, kv_dtype: str = "bfloat16", tp: int = 1) -> float:
    return (
        2
        * len(c.attention_layers)
        * _per_gpu(c.num_kv_heads, tp)
        * c.head_dim
        * dtype_bytes(kv_dtype)
    )


def state_bytes_per_sequence_per_gpu(
    c: GraniteConfig,
    state_dtype: str = "bfloat16",
    tp: int = 1,
    conv_columns: int | None = None,
    conv_dtype: str | None = None,
) -> float:
    """Mamba state on one GPU; the conv state may be kept in another dtype (vLLM does)."""
    cols = c.mamba_conv - 1 if conv_columns is None else conv_columns
    channels = c.mamba_inner / tp + 2 * _per_gpu(c.mamba_groups, tp) * c.mamba_state
    conv = channels * cols * dtype_bytes(conv_dtype or state_dtype)
    ssm = c.mamba_heads / tp * c.mamba_head_dim * c.mamba_state * dtype_bytes(state_dtype)
    return len(c.mamba_layers) * (conv + ssm)


def activation_bytes(
    c: GraniteConfig,
    chunk_tokens: int,
    decode_batch: int,
    dtype: str = "bfloat16",
    tp: int = 1,
    scan_workspace: bool = True,
    graphed_decode: bool = False,
    experts_in_place: bool = True,
) -> int:
    """Workspace of the largest step: a prefill chunk or a decode batch, whichever is larger;
    with `graphed_decode` (gkit on CUDA) both: decode steps replay CUDA graphs whose
    workspace stays reserved in the graphs' own pool, beside the eager prefill's.

    Counts the tensors alive at the peak of gkit's forward (layers.py, ssd.py): the residual
    stream and its norm, the widest projection output, fp32 logits for one row per sequence,
    and for Mamba layers
    - prefill: the Triton SSD scan's workspace (kernels/triton/scan.py): each chunk's state per
      head (fp32, and again in the model dtype as it enters the next chunk), C.B per chunk
      and group, dt and its cumulative sum per chunk (the scan's output y sits within
      the per-token term, which bounds the MLP's larger phase);
    - decode: two fp32 copies of one layer's SSM state per sequence (the state read from a
      bf16 pool and the new state) when the pool is not fp32.
    Engines with fused scan kernels pass `scan_workspace=False`.
    """
    d = dtype_bytes(dtype)
    h = c.hidden_size
    proj = (2 * c.mamba_inner + 2 * c.mamba_groups * c.mamba_state + c.mamba_heads) / tp
    mlp = 2 * max(c.shared_size, c.expert_size * max(c.top_k, 1)) / tp
    # MoE prefill (layers.moe.MoE._grouped_mm) holds two (tokens x k, hidden) tensors at once
    moe = c.top_k * h if c.num_experts else 0
    widest = max(proj, mlp, moe, (c.num_heads + 2 * c.num_kv_heads) * c.head_dim / tp)
    per_token = (3 * h + 2 * widest) * d
    heads = c.mamba_heads / tp
    prefill = decode = 0.0
    if c.mamba_layers and scan_workspace:
        q = c.mamba_chunk  # the scan pads a short prompt to one whole chunk
        chunks = -(-chunk_tokens // q)
        groups = _per_gpu(c.mamba_groups, tp)
        state = c.mamba_head_dim * c.mamba_state
        prefill = 4 * chunks * (heads * (state + 2 * q) + groups * q * q)
        prefill += chunks * heads * state * d  # the entering states, in the model dtype
        if d != 4:
            decode = 2 * decode_batch * heads * c.mamba_head_dim * c.mamba_state * 4
    if c.num_experts:  # decode sends up to 64 token copies (k per token) to the experts:
        copies = min(decode_batch, 64 // c.top_k) * c.top_k  # the largest such batch
        # kernels/triton/moe.py reads the experts in place and keeps one activation row per copy;
        # layers.moe.MoE._gathered (fp8 stacks) copies each chosen expert's weights
        width = c.expert_size if experts_in_place else 3 * h * c.expert_size
        decode += copies * width / tp * d
    logits = decode_batch * c.vocab_size / tp * 4
    if graphed_decode:
        return int(chunk_tokens * per_token + prefill + decode_batch * per_token + decode + logits)
    return int(max(chunk_tokens, decode_batch) * per_token + max(prefill, decode) + logits)
