"""Triton kernels for the MoE experts at decode: each token's k experts read in place.

The PyTorch decode path (layers.MoE._gathered) copies every chosen expert's weights into a
new tensor (`weight[experts]`) and then multiplies by the copy: each active weight byte is
read, written and read again, and a decode step is nothing but weight reads. Here the expert
index is read inside the kernel and its rows are loaded straight from the (E, rows, cols)
stack, once per token copy.

Two kernels per MoE layer (the model's widths are compile-time constants):
- `_gate_up_kernel`: act[j] = silu(W1[e_j, :I] @ x) * (W1[e_j, I:] @ x) for each token copy
  j = token * k + slot; one program per (copy, block of I rows), gate and up rows together.
  Given the router's logits instead of the experts, it first picks them itself (top-k and
  softmax over E values; `moe_decode_routed`, batch 1), so routing costs no launch;
- `_down_kernel`: out[t] = sum over slot of w[t, slot] * (W2[e] @ act[t * k + slot]); one
  program per (token, block of output rows), the k experts summed in slot order (no
  atomics, so the result does not depend on scheduling); in `moe_decode_routed` it also
  adds the shared MLP (SiLU * up of its gate/up, then its output product).
Batches of more rows pick their experts first with `route` (cuBLAS router product + one
top-k kernel) and run `moe_decode`.

Rounding follows the PyTorch path (bmm outputs, SiLU, products and the weighted sum each
rounded to the model dtype where PyTorch rounds them), products accumulate in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _top_k(logits, K: tl.constexpr, BLOCK_E: tl.constexpr):
    """([BLOCK_E] experts, [BLOCK_E] softmax weights) whose first K entries are each slot's
    choice: k rounds of argmax (ties to the lower expert index), then the softmax over the
    k chosen logits, as PyTorch's topk + softmax on the router's (rounded) logits."""
    e = tl.arange(0, BLOCK_E)
    top = tl.full([BLOCK_E], float("-inf"), dtype=tl.float32)
    chosen_at = tl.zeros([BLOCK_E], dtype=tl.int32)
    for slot in tl.static_range(K):
        best = tl.max(logits, axis=0)
        chosen = tl.min(tl.where(logits == best, e, BLOCK_E), axis=0)
        chosen_at = tl.where(e == slot, chosen, chosen_at)
        top = tl.where(e == slot, best, top)
        logits = tl.where(e == chosen, float("-inf"), logits)
    p = tl.exp(top - tl.max(top, axis=0))  # the first slot holds the largest
    return chosen_at, p / tl.sum(p, axis=0)


@triton.jit
def _load_logits(logits_ptr, t, sl, E: tl.constexpr, BLOCK_E: tl.constexpr):
    e = tl.arange(0, BLOCK_E)
    logits = tl.load(logits_ptr + t * sl + e, mask=e < E, other=0.0).to(tl.float32)
    return tl.where(e < E, logits, float("-inf"))


@triton.jit
def _gate_up_kernel(
    x_ptr, logits_ptr, experts_ptr, weights_ptr, w_ptr, act_ptr, sx, sl, sw_e, sw_r,
    HIDDEN: tl.constexpr, INNER: tl.constexpr, K: tl.constexpr, E: tl.constexpr,
    ROUTE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    j = tl.program_id(0)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < INNER
    if ROUTE:  # top-k of the token's router logits here (E values), no kernel of its own
        slots = tl.arange(0, BLOCK_E)
        chosen, p = _top_k(_load_logits(logits_ptr, j // K, sl, E, BLOCK_E), K, BLOCK_E)
        mine = slots == j % K
        e = tl.sum(tl.where(mine, chosen, 0), axis=0).to(tl.int64)
        first = tl.program_id(1) == 0  # one program per copy records the choice for _down
        tl.store(experts_ptr + j + slots * 0, e, mask=mine & first)
        tl.store(weights_ptr + j + slots * 0, p.to(weights_ptr.dtype.element_ty), mask=mine & first)
    else:
        e = tl.load(experts_ptr + j).to(tl.int64)
    x_row = x_ptr + (j // K) * sx
    gate_rows = w_ptr + e * sw_e + i[:, None] * sw_r
    up_rows = gate_rows + INNER * sw_r
    gate = tl.zeros([BLOCK_I], dtype=tl.float32)
    up = tl.zeros([BLOCK_I], dtype=tl.float32)
    for h0 in range(0, HIDDEN, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        h_ok = h < HIDDEN
        x = tl.load(x_row + h, mask=h_ok, other=0.0).to(tl.float32)[None, :]
        mask = i_ok[:, None] & h_ok[None, :]
        gate += tl.sum(tl.load(gate_rows + h[None, :], mask=mask, other=0.0) * x, axis=1)
        up += tl.sum(tl.load(up_rows + h[None, :], mask=mask, other=0.0) * x, axis=1)
    dtype = act_ptr.dtype.element_ty
    gate = gate.to(dtype).to(tl.float32)
    up = up.to(dtype).to(tl.float32)
    silu = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
    tl.store(act_ptr + j * INNER + i, (silu * up).to(dtype), mask=i_ok)


@triton.jit
def _down_kernel(
    act_ptr, experts_ptr, weights_ptr, w_ptr, out_ptr, sw_e, sw_r,
    gu_ptr, s_gu, ws_ptr, sws,
    HIDDEN: tl.constexpr, INNER: tl.constexpr, K: tl.constexpr, SHARED: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o < HIDDEN
    dtype = out_ptr.dtype.element_ty
    total = tl.zeros([BLOCK_O], dtype=tl.float32)
    for slot in tl.static_range(K):
        j = t * K + slot
        e = tl.load(experts_ptr + j).to(tl.int64)
        rows = w_ptr + e * sw_e + o[:, None] * sw_r
        acc = tl.zeros([BLOCK_O], dtype=tl.float32)
        for i0 in range(0, INNER, BLOCK_I):
            i = i0 + tl.arange(0, BLOCK_I)
            i_ok = i < INNER
            a = tl.load(act_ptr + j * INNER + i, mask=i_ok, other=0.0).to(tl.float32)[None, :]
            w = tl.load(rows + i[None, :], mask=o_ok[:, None] & i_ok[None, :], other=0.0)
            acc += tl.sum(w * a, axis=1)
        weight = tl.load(weights_ptr + j).to(tl.float32)
        total += (acc.to(dtype).to(tl.float32) * weight).to(dtype).to(tl.float32)
    if SHARED > 0:  # + the shared MLP's output product, its silu(gate) * up made here
        acc = tl.zeros([BLOCK_O], dtype=tl.float32)
        for s0 in range(0, SHARED, BLOCK_I):
            s = s0 + tl.arange(0, BLOCK_I)
            s_ok = s < SHARED
            g = tl.load(gu_ptr + t * s_gu + s, mask=s_ok, other=0.0).to(tl.float32)
            u = tl.load(gu_ptr + t * s_gu + SHARED + s, mask=s_ok, other=0.0).to(tl.float32)
            a = ((g * tl.sigmoid(g)).to(dtype).to(tl.float32) * u).to(dtype).to(tl.float32)
            w = tl.load(ws_ptr + o[:, None] * sws + s[None, :], mask=o_ok[:, None] & s_ok[None, :])
            acc += tl.sum(w.to(tl.float32) * a[None, :], axis=1)
        # shared_mlp(h) + moe(h): each rounded, then their sum
        total = total.to(dtype).to(tl.float32) + acc.to(dtype).to(tl.float32)
    tl.store(out_ptr + t * HIDDEN + o, total.to(dtype), mask=o_ok)


@triton.jit
def _top_k_kernel(
    logits_ptr, experts_ptr, weights_ptr, sl,
    E: tl.constexpr, K: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    chosen, p = _top_k(_load_logits(logits_ptr, t, sl, E, BLOCK_E), K, BLOCK_E)
    slots = tl.arange(0, BLOCK_E)
    tl.store(experts_ptr + t * K + slots, chosen.to(tl.int64), mask=slots < K)
    tl.store(weights_ptr + t * K + slots, p.to(weights_ptr.dtype.element_ty), mask=slots < K)


def route(x: torch.Tensor, router: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(experts (T, k) int64, weights (T, k) in x's dtype) for x (T, H) and the router's
    weight (E, H): the router's product (cuBLAS), then top-k and the softmax in one kernel,
    where PyTorch runs four more (cast, topk's two, softmax, cast) per MoE layer.

    Session 6 did the product in the same kernel, one program per token: 34 us per layer,
    a third of h-tiny's decode step (bench/results-gpu_bench-h200-10-profile.txt)."""
    logits = torch.nn.functional.linear(x, router)
    t, e = logits.shape
    assert k <= e
    experts = torch.empty(t, k, dtype=torch.int64, device=x.device)
    weights = torch.empty(t, k, dtype=x.dtype, device=x.device)
    _top_k_kernel[(t,)](
        logits, experts, weights, logits.stride(0),
        E=e, K=k, BLOCK_E=triton.next_power_of_2(max(e, k)),
    )  # fmt: skip
    return experts, weights


def moe_decode(
    x: torch.Tensor,
    experts: torch.Tensor,
    weights: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    config: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """out (T, H) = sum_k weights[:, k] * expert_k(x) for x (T, H), experts and weights
    (T, k), w1 (E, 2I, H) (gate rows then up rows), w2 (E, H, I). `config` (see CONFIG)
    overrides the block shapes."""
    k = experts.shape[1]
    experts = experts.reshape(-1).contiguous()
    weights = weights.reshape(-1).contiguous()
    return _experts(x, None, experts, weights, k, w1, w2, None, config or CONFIG)


def moe_decode_routed(
    x: torch.Tensor,
    logits_gate_up: torch.Tensor,
    num_experts: int,
    k: int,
    w1: torch.Tensor,
    w2: torch.Tensor,
    shared_out: torch.Tensor | None,
    config: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """shared_mlp(x) + moe(x) in two kernels, from one product's output
    logits_gate_up (T, E + 2S) = [router logits | shared gate | shared up] of x (T, H)
    (triton_fused_linear.norm_linear with the router and the shared input stacked): the
    top-k and softmax run inside the gate/up kernel, the shared SiLU * up and output product
    inside the down kernel. `shared_out` (H, S) is the shared MLP's output weight."""
    t = x.shape[0]
    experts = torch.empty(t * k, dtype=torch.int64, device=x.device)
    weights = torch.empty(t * k, dtype=x.dtype, device=x.device)
    shared = (logits_gate_up[:, num_experts:], shared_out) if shared_out is not None else None
    return _experts(
        x, logits_gate_up[:, :num_experts], experts, weights, k, w1, w2, shared, config or CONFIG
    )  # fmt: skip


# (gate/up rows per program, gate/up columns per load, its warps, down rows per program, down
# columns per load, its warps). Whole rows per load keep more bytes in flight than the
# 256-column loop of session 6; 2 down rows a program was the best of the one-at-a-time
# sweep at h-tiny's shapes (19.2 us for the routed layer with cold weights, against 21.7 at
# 4 rows; results-gpu_bench-h200-12-sweep.txt).
CONFIG = (4, 2048, 4, 2, 1024, 4)


def _experts(x, logits, experts, weights, k, w1, w2, shared, config):
    """The two kernels: gate/up per token copy (routing first where `logits` is given),
    then down with the k experts summed in slot order (and the shared MLP added)."""
    t = x.shape[0]
    i, h = w2.shape[2], w2.shape[1]
    assert w1.shape[1] == 2 * i and w1.shape[2] == h and x.shape == (t, h)
    assert w1.stride(2) == 1 and w2.stride(2) == 1
    x = x if x.stride(1) == 1 else x.contiguous()
    act = torch.empty(t * k, i, dtype=x.dtype, device=x.device)
    out = torch.empty(t, h, dtype=x.dtype, device=x.device)
    gate_rows, gate_cols, gate_warps, down_rows, down_cols, down_warps = config
    e = logits.shape[1] if logits is not None else 1
    _gate_up_kernel[(t * k, triton.cdiv(i, gate_rows))](
        x, logits if logits is not None else x, experts, weights, w1, act,
        x.stride(0), logits.stride(0) if logits is not None else 0, w1.stride(0), w1.stride(1),
        HIDDEN=h, INNER=i, K=k, E=e, ROUTE=logits is not None,
        BLOCK_E=triton.next_power_of_2(max(e, k)), BLOCK_I=gate_rows,
        BLOCK_H=min(gate_cols, triton.next_power_of_2(h)), num_warps=gate_warps,
    )  # fmt: skip
    gate_up, shared_w = shared if shared is not None else (x, w2)
    s = shared_w.shape[1] if shared is not None else 0
    assert shared is None or (gate_up.shape[1] == 2 * s and shared_w.shape[0] == h)
    _down_kernel[(t, triton.cdiv(h, down_rows))](
        act, experts, weights, w2, out, w2.stride(0), w2.stride(1),
        gate_up, gate_up.stride(0), shared_w, shared_w.stride(0),
        HIDDEN=h, INNER=i, K=k, SHARED=s, BLOCK_O=down_rows,
        BLOCK_I=min(down_cols, triton.next_power_of_2(max(i, s))), num_warps=down_warps,
    )  # fmt: skip
    return out
