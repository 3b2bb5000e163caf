"""The blocks of a Granite 4.0 layer: norms, attention, the Mamba-2 mixer, MLP and MoE.

Parameter names match the Hub checkpoints (`mamba.in_proj.weight`,
`block_sparse_moe.input_linear.weight`, ...) so loading is a plain state-dict assignment.
Numerics follow transformers' GraniteMoeHybrid (REFERENCE.md section 1): norms in fp32 with
the weight applied after casting back; attention scaled by attention_multiplier; the router
softmax over the top-k logits only; the Mamba gate applied before the gated norm.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from granite_runtime import cpu_kernels, ssd, tp
from granite_runtime.cache import Batch, HybridCache
from granite_runtime.config import GraniteConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, groups: int = 1, across_ranks: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps, self.groups = eps, groups
        # Tensor parallelism with one Mamba group: each rank holds part of the normed
        # vector, so the sum of squares is all-reduced (tp.py).
        self.across_ranks = across_ranks

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        if gate is None and self.groups == 1 and _cpu_kernel(x, self.weight):
            return cpu_kernels.add_rms_norm(x, None, 1.0, self.weight, self.eps)
        dtype = x.dtype
        h = x.float()
        if gate is not None:
            h = h * F.silu(gate.float())
        if self.across_ranks:
            squares = tp.all_reduce(h.pow(2).sum(-1, keepdim=True))
            h = h * torch.rsqrt(squares / (h.shape[-1] * tp.world_size()) + self.eps)
        elif self.groups == 1:
            h = F.rms_norm(h, (h.shape[-1],), eps=self.eps)
        else:
            h = F.rms_norm(
                h.unflatten(-1, (self.groups, -1)), (h.shape[-1] // self.groups,), eps=self.eps
            ).flatten(-2)
        return self.weight * h.to(dtype)

    def add_forward(
        self, x: torch.Tensor, delta: torch.Tensor, alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + alpha * delta, this norm of it): the residual add before every norm. On the
        CPU kernel path the add happens in place in x, which the caller owns."""
        if self.groups == 1 and _cpu_kernel(x, delta, self.weight):
            return x, cpu_kernels.add_rms_norm(x, delta, alpha, self.weight, self.eps)
        if self.groups == 1 and not self.across_ranks and _use_fused(x):
            return _fused().add_rms_norm(x, delta, alpha, self.weight, self.eps)
        x = torch.add(x, delta, alpha=alpha)
        return x, self(x)


# Decode-sized calls (a few rows) go to the C kernels on the CPU; prefill stays on PyTorch's
# GEMMs, which are compute-bound and already fast.
CPU_KERNEL_MAX_ROWS = 8


def _cpu_kernel(x: torch.Tensor, *others: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.numel() <= CPU_KERNEL_MAX_ROWS * x.shape[-1]
        and cpu_kernels.accepts(x, *others)
        and cpu_kernels.available()
    )


class DecodeLinear(nn.Module):
    """nn.Linear for inference with a path for decode-sized inputs: on the CPU a few rows go
    to the C matrix-vector kernel (one pass over the weight at the read bandwidth), on CUDA
    to the Triton GEMV where it measured faster than cuBLAS (triton_gemv.py); more rows to
    PyTorch's GEMM. Same parameter names as nn.Linear, so state dicts still match."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _cpu_kernel(x, self.weight) and (self.bias is None or cpu_kernels.accepts(self.bias)):
            return cpu_kernels.linear(x, self.weight, self.bias)
        if x.is_cuda and TRITON_DECODE and _triton_ops() is not None:
            from granite_runtime import triton_gemv

            if triton_gemv.applies(x, self.weight, self.bias):
                return triton_gemv.linear(x, self.weight)
        return F.linear(x, self.weight, self.bias)


def swap_linears(model: nn.Module, wrapper: type[nn.Module], accept) -> int:
    """Replace each nn.Linear child for which accept(child) holds by wrapper(child)."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and accept(child):
                setattr(module, name, wrapper(child))
                swapped += 1
    return swapped


class Weight(nn.Module):
    """A bare weight under a module name, so names match the checkpoint (`x.weight`)."""

    def __init__(self, *shape: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape))

    def rows(self, index) -> torch.Tensor:
        """weight[index] in the compute dtype (fp8.Fp8Weight dequantizes here)."""
        return self.weight[index]


class SwiGLU(nn.Module):
    """Granite's shared MLP: input_linear -> (gate, up) -> silu(gate) * up -> output_linear."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.input_linear = nn.Linear(hidden, 2 * inner, bias=False)
        self.output_linear = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.input_linear(x)
        if _use_fused(gate_up):
            return self.output_linear(_fused().silu_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.output_linear(F.silu(gate) * up)


class MoE(nn.Module):
    def __init__(self, config: GraniteConfig):
        super().__init__()
        e, h, i = config.num_experts, config.hidden_size, config.expert_size
        self.top_k = config.top_k
        self.router = nn.Module()
        self.router.layer = nn.Linear(h, e, bias=False)
        self.input_linear = Weight(e, 2 * i, h)
        self.output_linear = Weight(e, h, i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        decode = flat.shape[0] * self.top_k <= 64
        # one token on one GPU usually takes model.DecoderLayer._one_row_mlp instead: the
        # router, the shared MLP and the experts in 3 kernels (triton_fused_linear)
        if decode and moe_in_place(flat, self.input_linear):  # 4 kernels (triton_moe)
            experts, weights = moe_kernels().route(flat, self.router.layer.weight, self.top_k)
            out = moe_kernels().moe_decode(
                flat, experts, weights, self.input_linear.weight, self.output_linear.weight
            )
            return out.view(shape)
        logits = self.router.layer(flat).float()
        top_logits, experts = logits.topk(self.top_k, dim=-1)
        weights = torch.softmax(top_logits, dim=-1).to(flat.dtype)
        if decode:
            out = self._gathered(flat, experts, weights)
        else:
            out = self._grouped(flat, experts, weights)
        return out.view(shape)

    def _gathered(self, flat, experts, weights):
        """Few tokens (decode): gather each token's k experts and run them as one bmm."""
        t, k = experts.shape
        w1 = self.input_linear.rows(experts.reshape(-1))  # (t*k, 2i, h)
        w2 = self.output_linear.rows(experts.reshape(-1))  # (t*k, h, i)
        xs = flat.repeat_interleave(k, dim=0).unsqueeze(-1)  # (t*k, h, 1)
        gate, up = torch.bmm(w1, xs).squeeze(-1).chunk(2, dim=-1)
        y = torch.bmm(w2, (F.silu(gate) * up).unsqueeze(-1)).squeeze(-1)  # (t*k, h)
        return (y.view(t, k, -1) * weights.unsqueeze(-1)).sum(dim=1)

    def _grouped(self, flat, experts, weights):
        """Many tokens (prefill): sort token copies by expert and run each expert once."""
        global GROUPED_MM
        if GROUPED_MM and _grouped_mm_applies(flat, self.input_linear):
            try:
                return self._grouped_mm(flat, experts, weights)
            except RuntimeError:  # this torch's kernel refuses the shapes: the loop, from now on
                GROUPED_MM = False
        out = torch.zeros_like(flat)
        order = experts.reshape(-1).argsort(stable=True)
        counts = torch.bincount(experts.reshape(-1), minlength=self.router.layer.out_features)
        token_of = order // self.top_k
        start = 0
        for e, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            idx = order[start : start + count]
            tokens = token_of[start : start + count]
            start += count
            gate, up = F.linear(flat[tokens], self.input_linear.rows(e)).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.output_linear.rows(e))
            out.index_add_(0, tokens, y * weights.reshape(-1)[idx, None])
        return out

    def _grouped_mm(self, flat, experts, weights):
        """The same with one grouped GEMM per projection (`torch._grouped_mm`): no loop over
        experts, no host sync, fixed shapes, so decode steps of any batch size are graphed
        through it (graphs.GraphedDecoder). Token copies are sorted by expert, the products
        run group by group, and the copies go back to (token, k) order before the weighted
        sum, so the sum's order is fixed (no atomics)."""
        t, k = experts.shape
        flat_experts = experts.reshape(-1)
        order = flat_experts.argsort(stable=True)
        # counts by scatter, not bincount: bincount reads the largest id back to the host to
        # size its output, which a CUDA graph cannot capture; this shape is fixed (E,)
        counts = torch.zeros(self.router.layer.out_features, dtype=torch.int32, device=flat.device)
        counts.scatter_add_(0, flat_experts, torch.ones_like(flat_experts, dtype=torch.int32))
        offsets = counts.cumsum(0, dtype=torch.int32)
        w1, w2 = self.input_linear.weight, self.output_linear.weight  # (E, 2i, h), (E, h, i)
        # each intermediate is dropped as soon as the next exists: at most two (t*k, h)
        # tensors are alive, which is what memory.activation_bytes counts for MoE
        gate_up = torch._grouped_mm(flat[order // k], w1.transpose(-2, -1), offs=offsets)
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate) * up
        del gate_up, gate, up
        y = torch._grouped_mm(act, w2.transpose(-2, -1), offs=offsets)
        del act
        unsorted = torch.empty_like(y)
        unsorted[order] = y
        del y
        # (t, 1, k) @ (t, k, h): the weighted sum over each token's k experts, in k order
        return torch.bmm(weights.unsqueeze(1), unsorted.view(t, k, -1)).squeeze(1)


# MoE prefill through torch._grouped_mm where it runs (below); False keeps the loop over
# experts (set when the kernel refused a shape, or by a benchmark comparing the two).
GROUPED_MM = True


def graph_safe_moe(model: nn.Module) -> bool:
    """Whether every MoE layer runs many-token steps through torch._grouped_mm, whose
    shapes and launches are fixed (a CUDA graph can hold them at any batch size)."""
    stacks = [m.input_linear for m in model.modules() if isinstance(m, MoE)]
    if not stacks or not GROUPED_MM:
        return False
    probe = getattr(stacks[0], "weight", None)
    if probe is None:
        return False
    return all(_grouped_mm_applies(probe[:1, :1, 0], s) for s in stacks)


def _grouped_mm_applies(x: torch.Tensor, stack: nn.Module) -> bool:
    """torch._grouped_mm runs on the CPU in any dtype and on CUDA in bf16 from Hopper on;
    fp8 expert stacks (fp8.Fp8Weight) keep the per-expert loop, which dequantizes."""
    if not isinstance(stack, Weight) or not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cpu":
        return True
    return (
        x.is_cuda
        and x.dtype == torch.bfloat16
        and torch.cuda.get_device_capability(x.device) >= (9, 0)
    )


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: GraniteConfig, layer: int):
        super().__init__()
        hd, bias = config.head_dim, config.attention_bias
        self.heads, self.kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, hd
        self.scale = config.attention_multiplier
        self.q_proj = nn.Linear(config.hidden_size, self.heads * hd, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(self.heads * hd, config.hidden_size, bias=bias)
        self.rope_theta = config.rope_theta if config.use_rope else None
        self.layer = layer

    def _rope(self, q, k, positions):
        inv_freq = 1.0 / (
            self.rope_theta
            ** (
                torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=q.device)
                / self.head_dim
            )
        )
        freqs = positions.float().unsqueeze(-1) * inv_freq  # (B, L, D/2)
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # (B, 1, L, D)
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin

    def forward(self, x: torch.Tensor, batch: Batch, cache: HybridCache) -> torch.Tensor:
        b, length, _ = x.shape
        q = self.q_proj(x).view(b, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        positions = batch.starts[:, None] + torch.arange(length, device=x.device)
        if self.rope_theta is not None:
            q, k = self._rope(q, k, positions)
        index = cache.attn_index[self.layer]
        kc, vc = cache.k[index], cache.v[index]
        if batch.static:
            return self.o_proj(self._static_decode(q, k, v, kc, vc, batch))
        total = max(batch.starts_list) + length
        if b == 1:  # views, no gather: the common prefill and batch-1 decode case
            slot, start = batch.slots_list[0], batch.starts_list[0]
            kc[slot, :, start : start + length] = k[0]
            vc[slot, :, start : start + length] = v[0]
            keys, values = kc[slot, :, :total].unsqueeze(0), vc[slot, :, :total].unsqueeze(0)
        else:
            rows = batch.slots[:, None].expand(b, length)
            kc[rows, :, positions] = k.transpose(1, 2).to(kc.dtype)
            vc[rows, :, positions] = v.transpose(1, 2).to(vc.dtype)
            keys, values = kc[batch.slots, :, :total], vc[batch.slots, :, :total]
        mask = None  # one query per row attending to every written key needs no mask
        if b == 1 and length > 1 and x.is_cuda:
            # a prompt chunk after `start` earlier tokens: causal aligned to the last key,
            # which SDPA runs as flash attention with no (length x total) mask in memory
            mask = causal_lower_right(length, total)
        elif length > 1 or b > 1:
            key_pos = torch.arange(total, device=x.device)
            mask = key_pos.view(1, 1, 1, total) <= positions.view(b, 1, length, 1)
        out = F.scaled_dot_product_attention(
            q,
            keys.to(q.dtype),
            values.to(q.dtype),
            attn_mask=mask,
            scale=self.scale,
            enable_gqa=True,
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, length, -1))

    def fused_input(self, x: torch.Tensor, cache: HybridCache) -> list[torch.Tensor] | None:
        """[q, k, v] weights where one token's norm and q/k/v products run as one kernel
        (triton_fused_linear, model.DecoderLayer) and `from_projection` follows: no RoPE
        (Granite 4.0's hybrids use none), a KV pool in the model dtype; else None."""
        linears = (self.q_proj, self.k_proj, self.v_proj, self.o_proj)
        if not FUSED_ATTENTION or self.rope_theta is not None or cache.k.dtype != x.dtype:
            return None
        if not (_use_triton(x, 1) and one_row_fused(x, *linears)):
            return None
        return [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]

    def from_projection(self, qkv: torch.Tensor, batch: Batch, cache: HybridCache):
        """Attention for one token from its [q | k | v] row: the decode kernel writes the new
        key and value into the pool and attends (no scatter kernels), then the output
        product; 3 kernels with the q/k/v product, where the separate path runs 10."""
        nq, nk, hd = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.head_dim
        qkv = qkv.view(1, -1)
        q = qkv[:, :nq].view(1, self.heads, hd)
        k = qkv[:, nq : nq + nk].view(1, self.kv_heads, hd)
        v = qkv[:, nq + nk :].view(1, self.kv_heads, hd)
        index = cache.attn_index[self.layer]
        out = _triton.decode_attention(
            q, cache.k[index], cache.v[index], batch.slots, batch.starts, self.scale, k, v
        )
        return fused_linear().linear(out.view(1, 1, nq), self.o_proj.weight)

    def _static_decode(self, q, k, v, kc, vc, batch: Batch) -> torch.Tensor:
        """One token per row, every shape fixed: scatter the new key/value to (slot, start),
        then attend over the slot's whole row, masked past the start."""
        b = q.shape[0]
        kc[batch.slots, :, batch.starts] = k[:, :, 0].to(kc.dtype)
        vc[batch.slots, :, batch.starts] = v[:, :, 0].to(vc.dtype)
        if _use_triton(q, 1):  # reads each slot's keys in place (triton_ops.py)
            out = _triton.decode_attention(
                q[:, :, 0], kc, vc, batch.slots, batch.starts, self.scale
            )
            return out.reshape(b, 1, -1)
        keys, values = kc[batch.slots], vc[batch.slots]  # (B, KVH, max_len, D)
        key_pos = torch.arange(kc.shape[2], device=q.device)
        mask = key_pos.view(1, 1, 1, -1) <= batch.starts.view(b, 1, 1, 1)
        out = F.scaled_dot_product_attention(
            q,
            keys.to(q.dtype),
            values.to(q.dtype),
            attn_mask=mask,
            scale=self.scale,
            enable_gqa=True,
        )
        return out.transpose(1, 2).reshape(b, 1, -1)


# The fused Triton decode state update (triton_ops.ssd_step) on CUDA; False falls back to
# the PyTorch ops (GKIT_TRITON=0, or set by a benchmark comparing the two).
TRITON_DECODE = os.environ.get("GKIT_TRITON", "1") != "0"
_triton = None


def _triton_ops():
    """granite_runtime.triton_ops, or None where Triton is missing (CPU builds of torch)."""
    global _triton, TRITON_DECODE
    if _triton is None:
        try:
            from granite_runtime import triton_ops
        except ImportError:
            TRITON_DECODE = False
            return None
        _triton = triton_ops
    return _triton


def _use_triton(x: torch.Tensor, length: int) -> bool:
    return length == 1 and x.is_cuda and TRITON_DECODE and _triton_ops() is not None


# The Triton chunked scan for prefill (triton_ssd.py); False keeps ssd.chunked_scan (set by
# GKIT_TRITON=0 or by a test comparing the two).
TRITON_SCAN = TRITON_DECODE


def _triton_scan():
    from granite_runtime import triton_ssd

    return triton_ssd


def _fused():
    from granite_runtime import triton_fused

    return triton_fused


def _use_fused(x: torch.Tensor) -> bool:
    """The fused Triton kernels (triton_fused.py) for norms, gates and the prefill conv."""
    return x.is_cuda and TRITON_DECODE and _triton_ops() is not None


def moe_kernels():
    from granite_runtime import triton_moe

    return triton_moe


def fused_linear():
    from granite_runtime import triton_fused_linear

    return triton_fused_linear


# One-row products with their norm or gate inside (triton_fused_linear.py); False keeps the
# separate kernels (set by a benchmark comparing the two).
FUSED_LINEAR = True
# One token's attention layer as 3 kernels (Attention.fused_input); False keeps the separate
# products and the KV scatter (set by a benchmark comparing the two).
FUSED_ATTENTION = True


def one_row_fused(x: torch.Tensor, *linears: nn.Module) -> bool:
    """Whether x (one token) and these linears take triton_fused_linear: CUDA, one row,
    bf16/fp16 weights of x's dtype without bias, one rank (under tensor parallelism the
    norms need sums across ranks)."""
    return (
        FUSED_LINEAR
        and x.numel() == x.shape[-1]  # first: prefill chunks leave at once
        and _use_fused(x)
        and tp.world_size() == 1
        # fp8.Fp8Linear holds `weight_fp8` and keeps its own matrix-vector kernel
        and all(isinstance(getattr(m, "weight", None), torch.Tensor) for m in linears)
        and all(getattr(m, "bias", None) is None for m in linears)
        and fused_linear().applies(x, *(m.weight for m in linears))
    )


def moe_in_place(x: torch.Tensor, stack: nn.Module) -> bool:
    """Decode's experts read in place by triton_moe (bf16/fp16/fp32 stacks; fp8.Fp8Weight
    stacks keep the gather, which dequantizes)."""
    return type(stack) is Weight and stack.weight.dtype == x.dtype and _use_fused(x)


def _use_triton_scan(x: torch.Tensor) -> bool:
    return x.is_cuda and TRITON_SCAN and _triton_ops() is not None


class Mamba2(nn.Module):
    def __init__(self, config: GraniteConfig, layer: int):
        super().__init__()
        c = config
        self.heads, self.head_dim, self.groups = c.mamba_heads, c.mamba_head_dim, c.mamba_groups
        self.state, self.inner, self.conv_dim = c.mamba_state, c.mamba_inner, c.mamba_conv_dim
        self.chunk, self.layer = c.mamba_chunk, layer
        self.dt_limit = (c.time_step_min, c.time_step_max)
        self.in_proj = nn.Linear(
            c.hidden_size, self.inner + self.conv_dim + self.heads, bias=c.mamba_proj_bias
        )
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, c.mamba_conv, groups=self.conv_dim, bias=c.mamba_conv_bias
        )
        self.dt_bias = nn.Parameter(torch.empty(self.heads))
        self.A_log = nn.Parameter(torch.empty(self.heads))
        self.D = nn.Parameter(torch.empty(self.heads))
        self.norm = RMSNorm(
            self.inner, c.rms_norm_eps, groups=self.groups, across_ranks=c.mamba_norm_across_ranks
        )
        self.out_proj = nn.Linear(self.inner, c.hidden_size, bias=c.mamba_proj_bias)
        # the output leaves this module already summed over ranks (_gated_out); with an
        # out_proj bias the scale would not commute, so the plain order is kept
        self.reduces_output = c.mamba_norm_across_ranks and not c.mamba_proj_bias

    def _constants(self) -> tuple[torch.Tensor, ...]:
        """fp32 A, D, dt_bias and the (C, K) conv weight, derived once from the loaded weights."""
        if getattr(self, "_const", None) is None or self._const[0].device != self.A_log.device:
            self._const = (
                -torch.exp(self.A_log.float()),
                self.D.float(),
                self.dt_bias.float(),
                self.conv1d.weight.squeeze(1),
            )
        return self._const

    def _conv(self, xbc: torch.Tensor, batch: Batch, cache: HybridCache) -> torch.Tensor:
        """Causal depthwise conv continuing from each slot's last d_conv-1 inputs."""
        index = cache.mamba_index[self.layer]
        if _use_triton(xbc, xbc.shape[1]):  # one fused pass; the window shifts in place
            out = _triton.conv_update(
                xbc[:, 0], cache.conv[index], self._constants()[3], self.conv1d.bias, batch.slots
            )
            return out.unsqueeze(1)
        rows = batch.rows
        if _use_fused(xbc):  # one pass over the chunk, the window read from the pool
            weight, bias = self._constants()[3], self.conv1d.bias
            return _fused().conv_prefill(xbc, cache.conv[index], weight, bias, batch.slots, rows)
        past = cache.conv[index, rows]  # (B, C, K-1); a view when slots are consecutive
        full = torch.cat([past.to(xbc.dtype), xbc.transpose(1, 2)], dim=-1)  # (B, C, K-1+L)
        cache.conv[index, rows] = full[:, :, -past.shape[-1] :].to(cache.conv.dtype)
        weight = self._constants()[3]  # (C, K)
        if xbc.shape[1] == 1:
            out = (full * weight).sum(-1, keepdim=True)
            if self.conv1d.bias is not None:
                out = out + self.conv1d.bias[:, None]
        else:
            out = F.conv1d(full, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)
        return F.silu(out).transpose(1, 2)  # (B, L, C)

    def _cpu_step(self, x: torch.Tensor, batch: Batch, cache: HybridCache) -> torch.Tensor | None:
        """The whole decode step but the two projections in one C call (cpu_decode.c), or
        None where it does not apply (not fp32 on the CPU, a prefill, no compiler)."""
        index = cache.mamba_index[self.layer]
        conv, ssm = cache.conv[index], cache.ssm[index]
        if x.shape[1] != 1 or self.norm.across_ranks:
            return None
        if not _cpu_kernel(x, conv, ssm, self.norm.weight):
            return None
        proj = self.in_proj(x)
        A, D, dt_bias, conv_w = self._constants()
        bias = self.conv1d.bias
        if not cpu_kernels.accepts(
            proj, conv_w, A, D, dt_bias, *([bias] if bias is not None else [])
        ):
            return None
        shape = cpu_kernels.MambaShape(
            x.shape[0], self.inner, self.conv_dim, conv_w.shape[1], self.heads, self.head_dim,
            self.groups, self.state, *self.dt_limit, self.norm.eps,
        )  # fmt: skip
        weights = (conv_w, bias, A, D, dt_bias, self.norm.weight)
        y = cpu_kernels.mamba_step(shape, proj, conv, ssm, batch.slots, weights)
        return self.out_proj(y.view(x.shape[0], 1, self.inner))

    def forward(self, x: torch.Tensor, batch: Batch, cache: HybridCache) -> torch.Tensor:
        if x.device.type == "cpu" and (out := self._cpu_step(x, batch, cache)) is not None:
            return out
        return self.from_projection(self.in_proj(x), batch, cache)

    def fused_input(self, x: torch.Tensor, cache: HybridCache) -> list[torch.Tensor] | None:
        """[in_proj's weight] where one token's norm and in_proj run as one kernel
        (triton_fused_linear, model.DecoderLayer) and `from_projection` follows; else None."""
        return [self.in_proj.weight] if one_row_fused(x, self.in_proj) else None

    def from_projection(self, proj: torch.Tensor, batch: Batch, cache: HybridCache):
        """The mixer after in_proj (proj: (B, L, in_proj's width)), so a caller that fused
        the norm into in_proj (model.DecoderLayer) continues from here."""
        b, length, _ = proj.shape
        z, xbc, dt = proj.split([self.inner, self.conv_dim, self.heads], dim=-1)
        xbc = self._conv(xbc, batch, cache)
        xs, Bm, Cm = xbc.split(
            [self.inner, self.groups * self.state, self.groups * self.state], dim=-1
        )
        xs = xs.view(b, length, self.heads, self.head_dim)
        Bm, Cm = (t.view(b, length, self.groups, self.state) for t in (Bm, Cm))
        if _use_triton(proj, length):  # softplus(dt) inside; the state updated in the pool
            A, D, dt_bias, _ = self._constants()
            ssm = cache.ssm[cache.mamba_index[self.layer]]
            y = _triton.ssd_step(
                xs[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], D, ssm, batch.slots,
                dt_bias=dt_bias, dt_limit=self.dt_limit,
            )  # fmt: skip
        else:
            y = self._scan(xs, self._dt(dt), Bm, Cm, batch, cache)
        # The gated norm sees the fp32 scan output, as transformers' prefill path does.
        return self._gated_out(y.reshape(b, length, self.inner), z, proj.dtype)

    def _dt(self, dt: torch.Tensor) -> torch.Tensor:
        dt = F.softplus(dt.float() + self._constants()[2])
        if self.dt_limit != (0.0, float("inf")):  # softplus is already >= 0
            dt = dt.clamp(*self.dt_limit)
        return dt

    def _scan(self, xs, dt, Bm, Cm, batch: Batch, cache: HybridCache) -> torch.Tensor:
        """y (fp32) of the SSD over xs (B, L, H, P) from each row's state in the pool,
        which is left holding the state after the last token."""
        A, D, _, _ = self._constants()
        index = cache.mamba_index[self.layer]
        rows = batch.rows
        held = cache.ssm[index, rows]  # a view when the rows' slots are consecutive
        in_place = isinstance(rows, slice) and held.dtype == torch.float32
        if xs.shape[1] > 1 and _use_triton_scan(xs):
            y, state = _triton_scan().chunked_scan(
                xs, dt, A, Bm, Cm, D, self.chunk,
                held if in_place else held.float(),
                final=held if in_place else None,  # then the final state lands in the pool
            )  # fmt: skip
        elif xs.shape[1] == 1:
            y, state = ssd.step(xs[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], D, held, in_place)
        else:
            y, state = ssd.chunked_scan(xs, dt, A, Bm, Cm, D, self.chunk, held)
            in_place = False
        if not in_place:
            cache.ssm[index, rows] = state.to(cache.ssm.dtype)
        return y

    def _gated_out(self, y: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """out_proj(gated RMSNorm(y, z)). Split over ranks with one group (`reduces_output`),
        the norm's per-token scale commutes with out_proj, so each rank projects its
        unscaled part and one all-reduce carries both the partial outputs and the sums of
        squares: one collective where the plain order needs two."""
        n = self.norm
        if n.groups == 1 and one_row_fused(z, self.out_proj):
            return fused_linear().gated_norm_linear(y, z, n.weight, n.eps, self.out_proj.weight)
        if not self.reduces_output and not self.norm.across_ranks and _use_fused(z):
            return self.out_proj(_fused().gated_rms_norm(y, z, n.weight, n.eps, n.groups))
        if not self.reduces_output:
            return self.out_proj(self.norm(y, gate=z).to(dtype))
        h = y.float() * F.silu(z.float())
        squares = h.pow(2).sum(-1, keepdim=True)
        partial = self.out_proj(self.norm.weight * h.to(dtype))
        both = tp.all_reduce(torch.cat([partial.float(), squares], dim=-1))
        scale = torch.rsqrt(both[..., -1:] / (self.inner * tp.world_size()) + self.norm.eps)
        return (both[..., :-1] * scale).to(dtype)
