"""Triton kernels for the MoE experts at decode: each token's k experts read in place.

The PyTorch decode path (layers.MoE._gathered) copies every chosen expert's weights into a
new tensor (`weight[experts]`) and then multiplies by the copy: each active weight byte is
read, written and read again, and a decode step is nothing but weight reads. Here the expert
index is read inside the kernel and its rows are loaded straight from the (E, rows, cols)
stack, once per token copy.

`route` picks each token's experts (router product, top-k, softmax) in one kernel. Then two
kernels per MoE layer (the model's widths are compile-time constants):
- `_gate_up_kernel`: act[j] = silu(W1[e_j, :I] @ x) * (W1[e_j, I:] @ x) for each token copy
  j = token * k + slot; one program per (copy, block of I rows), gate and up rows together;
- `_down_kernel`: out[t] = sum over slot of w[t, slot] * (W2[e] @ act[t * k + slot]); one
  program per (token, block of output rows), the k experts summed in slot order (no
  atomics, so the result does not depend on scheduling).

Rounding follows the PyTorch path (bmm outputs, SiLU, products and the weighted sum each
rounded to the model dtype where PyTorch rounds them), products accumulate in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gate_up_kernel(
    x_ptr, experts_ptr, w_ptr, act_ptr, sx, sw_e, sw_r,
    HIDDEN: tl.constexpr, INNER: tl.constexpr, K: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    j = tl.program_id(0)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < INNER
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
    HIDDEN: tl.constexpr, INNER: tl.constexpr, K: tl.constexpr,
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
    tl.store(out_ptr + t * HIDDEN + o, total.to(dtype), mask=o_ok)


@triton.jit
def _route_kernel(
    x_ptr, w_ptr, experts_ptr, weights_ptr, sx, sw,
    E: tl.constexpr, HIDDEN: tl.constexpr, K: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    e = tl.arange(0, BLOCK_E)
    e_ok = e < E
    logits = tl.zeros([BLOCK_E], dtype=tl.float32)
    for h0 in range(0, HIDDEN, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        h_ok = h < HIDDEN
        x = tl.load(x_ptr + t * sx + h, mask=h_ok, other=0.0).to(tl.float32)
        w_mask = e_ok[:, None] & h_ok[None, :]
        w = tl.load(w_ptr + e[:, None] * sw + h[None, :], mask=w_mask, other=0.0)
        logits += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    # the router's linear rounds its logits to the model dtype before the float() and topk
    logits = logits.to(weights_ptr.dtype.element_ty).to(tl.float32)
    logits = tl.where(e_ok, logits, float("-inf"))
    slots = tl.arange(0, BLOCK_E)
    top = tl.full([BLOCK_E], float("-inf"), dtype=tl.float32)
    for slot in tl.static_range(K):  # k rounds of argmax; ties go to the lower expert index
        best = tl.max(logits, axis=0)
        chosen = tl.min(tl.where(logits == best, e, BLOCK_E), axis=0)
        tl.store(experts_ptr + t * K + slot, chosen.to(tl.int64))
        top = tl.where(slots == slot, best, top)
        logits = tl.where(e == chosen, float("-inf"), logits)
    # softmax over the k chosen logits (the first is the largest)
    p = tl.exp(top - tl.max(top, axis=0))
    p = p / tl.sum(p, axis=0)
    tl.store(weights_ptr + t * K + slots, p.to(weights_ptr.dtype.element_ty), mask=slots < K)


def route(x: torch.Tensor, router: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(experts (T, k) int64, weights (T, k) in x's dtype) for x (T, H) and the router's
    weight (E, H): the router's linear, top-k and the softmax over the k in one kernel, where
    PyTorch runs five (linear, cast, topk's two, softmax, cast) per MoE layer."""
    t, h = x.shape
    e = router.shape[0]
    assert router.stride(1) == 1 and x.stride(1) == 1 and k <= e
    experts = torch.empty(t, k, dtype=torch.int64, device=x.device)
    weights = torch.empty(t, k, dtype=x.dtype, device=x.device)
    block_e = triton.next_power_of_2(max(e, k))
    block_h = max(16, min(triton.next_power_of_2(h), 8192 // block_e))
    _route_kernel[(t,)](
        x, router, experts, weights, x.stride(0), router.stride(0),
        E=e, HIDDEN=h, K=k, BLOCK_E=block_e, BLOCK_H=block_h,
    )  # fmt: skip
    return experts, weights


def moe_decode(
    x: torch.Tensor,
    experts: torch.Tensor,
    weights: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    block_rows: int = 4,
    block_cols: int = 256,
) -> torch.Tensor:
    """out (T, H) = sum_k weights[:, k] * expert_k(x) for x (T, H), experts and weights
    (T, k), w1 (E, 2I, H) (gate rows then up rows), w2 (E, H, I). `block_rows` output rows
    per program: small, so even one token's experts spread over every SM (4 rows: 768
    programs for h-tiny's gate/up at batch 1; fastest of 4-32 at 1 and 8 tokens on an H200,
    bench/NOTES.md)."""
    t, k = experts.shape
    i, h = w2.shape[2], w2.shape[1]
    assert w1.shape[1] == 2 * i and w1.shape[2] == h and x.shape == (t, h)
    assert w1.stride(2) == 1 and w2.stride(2) == 1
    x = x if x.stride(1) == 1 else x.contiguous()
    experts = experts.reshape(-1).contiguous()
    weights = weights.reshape(-1).contiguous()
    act = torch.empty(t * k, i, dtype=x.dtype, device=x.device)
    out = torch.empty(t, h, dtype=x.dtype, device=x.device)
    block_h = min(block_cols, triton.next_power_of_2(h))
    block_i = min(block_cols, triton.next_power_of_2(i))
    _gate_up_kernel[(t * k, triton.cdiv(i, block_rows))](
        x, experts, w1, act, x.stride(0), w1.stride(0), w1.stride(1),
        HIDDEN=h, INNER=i, K=k, BLOCK_I=block_rows, BLOCK_H=block_h,
    )  # fmt: skip
    _down_kernel[(t, triton.cdiv(h, block_rows))](
        act, experts, weights, w2, out, w2.stride(0), w2.stride(1),
        HIDDEN=h, INNER=i, K=k, BLOCK_O=block_rows, BLOCK_I=block_i,
    )  # fmt: skip
    return out
