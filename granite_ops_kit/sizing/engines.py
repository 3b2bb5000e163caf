"""What each engine allocates on one GPU, by its published rules (REFERENCE.md section 2).

- gkit: exact; the runtime allocates its pools from `granite_runtime.spec.memory`.
- vLLM 0.33: attention block size raised to the Mamba page (528 or 400 tokens in bf16), one
  page layout for all layers in groups, one state block per request per Mamba group, and a
  KV budget of total x gpu_memory_utilization - weights - peak activations - non-torch.
- llama.cpp: recurrent state always fp32, one cell per parallel sequence; KV (f16 by
  default) for n_ctx = context x sequences.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from granite_ops_kit.errors import UsageError
from granite_runtime.spec import memory
from granite_runtime.spec.config import GraniteConfig

MIB = 2**20
BITS = {
    "bf16": 16,
    "fp16": 16,
    "fp8": 8,
    "int8": 8,
    "int4": 4.125,  # int4 + group-128 scales
    "gguf-q8_0": 8.5,
    "gguf-q4_k_m": 4.85,
}
ENGINE_WEIGHTS = {
    "gkit": {"bf16", "fp16", "fp8"},
    "vllm": {"bf16", "fp16", "fp8", "int8", "int4"},
    "llama.cpp": {"bf16", "fp16", "gguf-q8_0", "gguf-q4_k_m"},
}
CUDA_CONTEXT = 512 * MIB  # driver context + cuBLAS workspace, outside the torch allocator
NCCL_BUFFERS = 384 * MIB  # per GPU when tensor parallel
CUDA_GRAPHS = {"gkit": 64 * MIB, "vllm": 512 * MIB, "llama.cpp": 0}
VLLM_BATCHED_TOKENS = 8192
LLAMA_UBATCH = 512


@dataclass
class Footprint:
    """Bytes on one GPU, and the engine's own numbers behind them."""

    weights: int
    kv_cache: int
    state_cache: int
    activations: int
    non_torch: int
    details: dict = field(default_factory=dict)

    @property
    def torch_reserved(self) -> int:
        """What torch.cuda.max_memory_reserved() should show (gkit)."""
        return self.weights + self.kv_cache + self.state_cache + self.activations

    @property
    def total(self) -> int:
        return self.torch_reserved + self.non_torch

    def to_json(self) -> dict:
        return {**asdict(self), "torch_reserved": self.torch_reserved, "total": self.total}


@dataclass(frozen=True)
class Workload:
    context: int
    concurrency: int
    weights_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    state_dtype: str = "bf16"
    gpu_memory_utilization: float = 0.9
    prefill_chunk: int = memory.PREFILL_CHUNK  # gkit's rules: the largest prefill workspace


def check_combination(engine: str, weights_dtype: str) -> None:
    if engine not in ENGINE_WEIGHTS:
        raise UsageError(f"unknown engine '{engine}'; choose gkit, vllm or llama.cpp.")
    if weights_dtype not in ENGINE_WEIGHTS[engine]:
        raise UsageError(
            f"--weights-dtype {weights_dtype} is not available with {engine}; "
            f"choose one of {', '.join(sorted(ENGINE_WEIGHTS[engine]))}."
        )


KV_DTYPES = {"bf16", "fp16", "fp8"}
STATE_DTYPES = {"bf16", "fp16", "float32"}


def check_workload(engine: str, w: Workload) -> None:
    """A usage error naming the first option out of range, before anything is planned."""
    for name, value, allowed in (
        ("--kv-dtype", w.kv_dtype, KV_DTYPES),
        ("--state-dtype", w.state_dtype, STATE_DTYPES),
    ):
        if value not in allowed:
            raise UsageError(f"{name} must be one of {', '.join(sorted(allowed))}, not '{value}'.")
    check_combination(engine, w.weights_dtype)
    if w.weights_dtype not in BITS:
        raise UsageError(f"unknown --weights-dtype '{w.weights_dtype}'.")


def _non_torch(engine: str, tp: int) -> int:
    return CUDA_CONTEXT + CUDA_GRAPHS[engine] + (NCCL_BUFFERS if tp > 1 else 0)


def gkit(c: GraniteConfig, w: Workload, tp: int) -> Footprint:
    kv = w.concurrency * w.context * memory.kv_bytes_per_token_per_gpu(c, w.kv_dtype, tp)
    state = w.concurrency * memory.state_bytes_per_sequence_per_gpu(c, w.state_dtype, tp)
    return Footprint(
        memory.weight_bytes_per_gpu(c, BITS[w.weights_dtype], tp),
        int(kv),
        int(state),
        memory.activation_bytes(
            c,
            w.prefill_chunk,
            w.concurrency,
            "bf16",
            tp,
            graphed_decode=True,
            experts_in_place=w.weights_dtype != "fp8",  # fp8 stacks gather (layers.moe.MoE)
        ),
        _non_torch("gkit", tp),
        {"prefill_chunk": w.prefill_chunk, "conv_columns": c.mamba_conv - 1},
    )


def vllm_layout(c: GraniteConfig, w: Workload, tp: int = 1) -> dict:
    """vLLM's hybrid page layout: block size, layers per group, page bytes."""
    attn, mamba = len(c.attention_layers), len(c.mamba_layers)
    per_token_layer = memory.kv_bytes_per_token_per_gpu(c, w.kv_dtype, tp) / max(attn, 1)
    if not mamba:
        return {
            "block_size": 16,
            "group_size": attn,
            "mamba_groups": 0,
            "page_bytes": int(16 * per_token_layer),
        }
    # conv state stays in the model dtype; only the SSM state follows --state-dtype.
    mamba_page = (
        memory.state_bytes_per_sequence_per_gpu(c, w.state_dtype, tp, conv_dtype="bf16") / mamba
    )
    block = 16 * math.ceil(mamba_page / per_token_layer / 16)
    group = min(attn, mamba) if attn else mamba
    return {
        "block_size": block,
        "group_size": group,
        "mamba_groups": math.ceil(mamba / group),
        "attention_groups": math.ceil(attn / group) if attn else 0,
        "page_bytes": int(max(block * per_token_layer, mamba_page)),
    }


def vllm(c: GraniteConfig, w: Workload, tp: int, gpu_bytes: int) -> Footprint:
    lay = vllm_layout(c, w, tp)
    weights = memory.weight_bytes_per_gpu(c, BITS[w.weights_dtype], tp)
    acts = memory.activation_bytes(c, VLLM_BATCHED_TOKENS, 256, "bf16", tp, scan_workspace=False)
    non_torch = _non_torch("vllm", tp)
    budget = gpu_bytes * w.gpu_memory_utilization - weights - acts - non_torch
    block_bytes = lay["group_size"] * lay["page_bytes"]
    num_blocks = max(0, int(budget // block_bytes))
    attn_groups = lay.get("attention_groups", 1)
    per_request = attn_groups * math.ceil(w.context / lay["block_size"]) + lay["mamba_groups"]
    used_attn = w.concurrency * attn_groups * math.ceil(w.context / lay["block_size"])
    used_state = w.concurrency * lay["mamba_groups"]
    details = {
        **lay,
        "num_blocks": num_blocks,
        "blocks_per_request": per_request,
        "max_num_seqs": num_blocks // per_request if per_request else 0,
        "kv_budget_bytes": int(budget),
    }
    return Footprint(
        weights, used_attn * block_bytes, used_state * block_bytes, acts, non_torch, details
    )


def llama_cpp(c: GraniteConfig, w: Workload, tp: int) -> Footprint:
    kv_dtype = "fp16" if w.kv_dtype == "bf16" else w.kv_dtype
    kv = w.context * w.concurrency * memory.kv_bytes_per_token_per_gpu(c, kv_dtype, tp)
    state = w.concurrency * memory.state_bytes_per_sequence_per_gpu(c, "float32", tp)
    acts = memory.activation_bytes(
        c, LLAMA_UBATCH, w.concurrency, "float32", tp, scan_workspace=False
    )
    return Footprint(
        memory.weight_bytes_per_gpu(c, BITS[w.weights_dtype], tp),
        int(kv),
        int(state),
        acts,
        _non_torch("llama.cpp", tp),
        {
            "n_ctx": w.context * w.concurrency,
            "n_parallel": w.concurrency,
            "kv_type": "f16" if kv_dtype == "fp16" else kv_dtype,
            "recurrent_state": "f32",
        },
    )


def footprint(engine: str, c: GraniteConfig, w: Workload, tp: int, gpu_bytes: int) -> Footprint:
    if engine == "gkit":
        return gkit(c, w, tp)
    if engine == "vllm":
        return vllm(c, w, tp, gpu_bytes)
    return llama_cpp(c, w, tp)
