"""Triton kernels for the MoE experts at decode: each token's k experts read in place.

The PyTorch decode path (layers.moe.MoE._gathered) copies every chosen expert's weights into a
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
  program per (token, block of output rows) loads all k experts' rows at once and sums
  them in a fixed order (no atomics, so the result does not depend on scheduling); in
  `moe_decode_routed` it also adds the shared MLP (SiLU * up of its gate/up, then its
  output product). It asks for all of these rows before the kernel before it (gate/up)
  ends (pdl.py): the shared rows need nothing, and which experts to read comes from
  the kernel two back (the router's logits, ranked again here, or `route`'s choice).
Batches of more rows pick their experts first with `route` (cuBLAS router product + one
top-k kernel) and run `moe_decode`.

Rounding follows the PyTorch path (bmm outputs, SiLU, products and the weighted sum each
rounded to the model dtype where PyTorch rounds them), products accumulate in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from granite_runtime.kernels.triton import pdl as triton_pdl
from granite_runtime.kernels.triton.options import DEFAULT, LaunchOptions
from granite_runtime.kernels.triton.pdl import wait_for_previous


@triton.jit
def _ranks(logits, BLOCK_E: tl.constexpr):
    """Each expert's rank among the router's logits: how many experts beat it (a larger
    logit, or the same and a lower index, as PyTorch's topk orders ties). One comparison of
    every pair and one reduction, where k rounds of argmax took 2k reductions, each a round
    trip through shared memory that held up the weight loads after it."""
    e = tl.arange(0, BLOCK_E)
    mine, theirs = logits[:, None], logits[None, :]
    beats = (theirs > mine) | ((theirs == mine) & (e[None, :] < e[:, None]))
    return tl.sum(beats.to(tl.int32), axis=1)


@triton.jit
def _slot_choice(logits, rank, slot, K: tl.constexpr, BLOCK_E: tl.constexpr):
    """(expert, weight) of one slot: the expert ranked `slot`, and its share of the softmax
    over the k chosen logits."""
    here = rank == slot
    expert = tl.sum(tl.where(here, tl.arange(0, BLOCK_E), 0), axis=0)
    p = tl.where(rank < K, tl.exp(logits - tl.max(logits, axis=0)), 0.0)
    return expert, tl.sum(tl.where(here, p, 0.0), axis=0) / tl.sum(p, axis=0)


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
    PDL: tl.constexpr,
):  # fmt: skip
    j = tl.program_id(0)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < INNER
    wait_for_previous(PDL)  # which rows to read depends on the router: nothing to load first
    if ROUTE:  # top-k of the token's router logits here (E values), no kernel of its own
        logits = _load_logits(logits_ptr, j // K, sl, E, BLOCK_E)
        e, weight = _slot_choice(logits, _ranks(logits, BLOCK_E), j % K, K, BLOCK_E)
        e = e.to(tl.int64)
        if tl.program_id(1) == 0:  # one program per copy records the weight for _down
            # (which ranks the experts again itself, before its wait)
            tl.store(weights_ptr + j, weight.to(weights_ptr.dtype.element_ty))
    else:
        e = tl.load(experts_ptr + j).to(tl.int64)
    x_row = x_ptr + (j // K) * sx
    gate_rows = w_ptr + e * sw_e + i[:, None] * sw_r
    up_rows = gate_rows + INNER * sw_r
    gate = tl.zeros([BLOCK_I], dtype=tl.float32)
    up = tl.zeros([BLOCK_I], dtype=tl.float32)
    for h0 in tl.static_range(0, HIDDEN, BLOCK_H):  # one load when BLOCK_H covers HIDDEN
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
def _slot_experts(logits_ptr, experts_ptr, t, sl, K: tl.constexpr, E: tl.constexpr,
                  ROUTE: tl.constexpr, SLOTS: tl.constexpr, BLOCK_E: tl.constexpr):  # fmt: skip
    """[SLOTS] experts of token t (0 past K): ranked from its router logits with ROUTE, else
    read from the recorded choice. One scalar pick per slot: picking all slots as one
    [SLOTS, BLOCK_E] reduction took 244 registers (2 programs per SM, 3 waves of down's 768
    programs: h-tiny 655.9 -> 465.9 tok/s); this takes 80."""
    slot = tl.arange(0, SLOTS)
    if ROUTE:
        rank = _ranks(_load_logits(logits_ptr, t, sl, E, BLOCK_E), BLOCK_E)
        e = tl.zeros([SLOTS], dtype=tl.int32)
        for s in tl.static_range(K):
            e = tl.where(slot == s, tl.sum(tl.where(rank == s, tl.arange(0, BLOCK_E), 0)), e)
    else:
        e = tl.load(experts_ptr + t * K + slot, mask=slot < K, other=0)
    return e.to(tl.int64)


@triton.jit
def _down_kernel(
    act_ptr, logits_ptr, experts_ptr, weights_ptr, w_ptr, out_ptr, sl, sw_e, sw_r,
    gu_ptr, s_gu, ws_ptr, sws,
    HIDDEN: tl.constexpr, INNER: tl.constexpr, K: tl.constexpr, E: tl.constexpr,
    ROUTE: tl.constexpr, SHARED: tl.constexpr, BLOCK_O: tl.constexpr, SLOTS: tl.constexpr,
    I_PAD: tl.constexpr, S_PAD: tl.constexpr, BLOCK_E: tl.constexpr, EARLY: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    # Every slot's rows in one [SLOTS, BLOCK_O, I_PAD] load (and the shared MLP's in one
    # more): one round trip to HBM per program. A loop over the slots, tried first, waited for
    # each slot's rows before asking for the next: 7 round trips, 1.1 TB/s.
    # All of it is asked for before the wait (pdl.py): the shared rows depend on
    # nothing, and which experts to read on the kernel two back, complete when this one's
    # programs run (the router's logits, or route's choice); gate/up writes only `act`.
    t = tl.program_id(0)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o < HIDDEN
    s = tl.arange(0, S_PAD)
    s_ok = s < SHARED
    if SHARED > 0:
        ws = tl.load(ws_ptr + o[:, None] * sws + s[None, :], mask=o_ok[:, None] & s_ok[None, :])
    if not EARLY:  # (the benchmark's comparison: the experts' rows after the wait)
        wait_for_previous(PDL)
    slot = tl.arange(0, SLOTS)
    slot_ok = slot < K
    e = _slot_experts(logits_ptr, experts_ptr, t, sl, K, E, ROUTE, SLOTS, BLOCK_E)
    i = tl.arange(0, I_PAD)
    i_ok = i < INNER
    rows = w_ptr + e[:, None, None] * sw_e + o[None, :, None] * sw_r + i[None, None, :]
    mask = slot_ok[:, None, None] & o_ok[None, :, None] & i_ok[None, None, :]
    w = tl.load(rows, mask=mask, other=0.0)
    if EARLY:
        wait_for_previous(PDL)
    dtype = out_ptr.dtype.element_ty
    j = t * K + slot
    a = tl.load(act_ptr + j[:, None] * INNER + i[None, :], mask=slot_ok[:, None] & i_ok[None, :],
                other=0.0).to(tl.float32)  # fmt: skip
    acc = tl.sum(w.to(tl.float32) * a[:, None, :], axis=2)  # [SLOTS, BLOCK_O]
    # the softmax weights: recorded by gate/up (or route) as rounded for this product
    weight = tl.load(weights_ptr + j, mask=slot_ok, other=0.0).to(tl.float32)
    # each expert's output and its weighted copy rounded as PyTorch rounds them, summed in fp32
    part = (acc.to(dtype).to(tl.float32) * weight[:, None]).to(dtype).to(tl.float32)
    total = tl.sum(part, axis=0)
    if SHARED > 0:  # + the shared MLP's output product, its silu(gate) * up made here
        g = tl.load(gu_ptr + t * s_gu + s, mask=s_ok, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + t * s_gu + SHARED + s, mask=s_ok, other=0.0).to(tl.float32)
        a_s = ((g * tl.sigmoid(g)).to(dtype).to(tl.float32) * u).to(dtype).to(tl.float32)
        shared = tl.sum(ws.to(tl.float32) * a_s[None, :], axis=1)
        # shared_mlp(h) + moe(h): each rounded, then their sum
        total = total.to(dtype).to(tl.float32) + shared.to(dtype).to(tl.float32)
    tl.store(out_ptr + t * HIDDEN + o, total.to(dtype), mask=o_ok)


@triton.jit
def _top_k_kernel(
    logits_ptr, experts_ptr, weights_ptr, sl,
    E: tl.constexpr, K: tl.constexpr, BLOCK_E: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    wait_for_previous(PDL)
    logits = _load_logits(logits_ptr, t, sl, E, BLOCK_E)
    rank = _ranks(logits, BLOCK_E)
    for slot in tl.static_range(K):
        expert, weight = _slot_choice(logits, rank, slot, K, BLOCK_E)
        tl.store(experts_ptr + t * K + slot, expert.to(tl.int64))
        tl.store(weights_ptr + t * K + slot, weight.to(weights_ptr.dtype.element_ty))


def route(
    x: torch.Tensor, router: torch.Tensor, k: int, launch: LaunchOptions = DEFAULT
) -> tuple[torch.Tensor, torch.Tensor]:
    """(experts (T, k) int64, weights (T, k) in x's dtype) for x (T, H) and the router's
    weight (E, H): the router's product (cuBLAS), then top-k and the softmax in one kernel,
    where PyTorch runs four more (cast, topk's two, softmax, cast) per MoE layer.

    Doing the product in the same kernel, one program per token, took 34 us per layer,
    a third of h-tiny's decode step (bench/results/gpu_bench-h200-10-profile.txt)."""
    logits = torch.nn.functional.linear(x, router)
    t, e = logits.shape
    assert k <= e
    experts = torch.empty(t, k, dtype=torch.int64, device=x.device)
    weights = torch.empty(t, k, dtype=x.dtype, device=x.device)
    _top_k_kernel[(t,)](
        logits, experts, weights, logits.stride(0),
        E=e, K=k, BLOCK_E=triton.next_power_of_2(max(e, k)), **triton_pdl.options(x, launch.pdl),
    )  # fmt: skip
    return experts, weights


def moe_decode(
    x: torch.Tensor,
    experts: torch.Tensor,
    weights: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    config: tuple[int, ...] | None = None,
    launch: LaunchOptions = DEFAULT,
) -> torch.Tensor:
    """out (T, H) = sum_k weights[:, k] * expert_k(x) for x (T, H), experts and weights
    (T, k), w1 (E, 2I, H) (gate rows then up rows), w2 (E, H, I). `config` (see CONFIG)
    overrides the block shapes.

    The down kernel reads `experts` before its wait (pdl.py): they must come from a
    kernel launched before this call (route's top-k, or a copy), as they always do."""
    k = experts.shape[1]
    experts = experts.reshape(-1).contiguous()
    weights = weights.reshape(-1).contiguous()
    config = config or launch.moe_blocks or CONFIG
    return _experts(x, None, experts, weights, k, w1, w2, None, config, launch)


def moe_decode_routed(
    x: torch.Tensor,
    logits_gate_up: torch.Tensor,
    num_experts: int,
    k: int,
    w1: torch.Tensor,
    w2: torch.Tensor,
    shared_out: torch.Tensor | None,
    config: tuple[int, ...] | None = None,
    launch: LaunchOptions = DEFAULT,
) -> torch.Tensor:
    """shared_mlp(x) + moe(x) in two kernels, from one product's output
    logits_gate_up (T, E + 2S) = [router logits | shared gate | shared up] of x (T, H)
    (fused_linear.norm_linear with the router and the shared input stacked): the
    top-k and softmax run inside the gate/up kernel, the shared SiLU * up and output product
    inside the down kernel. `shared_out` (H, S) is the shared MLP's output weight."""
    t = x.shape[0]
    experts = torch.empty(t * k, dtype=torch.int64, device=x.device)
    weights = torch.empty(t * k, dtype=x.dtype, device=x.device)
    shared = (logits_gate_up[:, num_experts:], shared_out) if shared_out is not None else None
    return _experts(
        x, logits_gate_up[:, :num_experts], experts, weights, k, w1, w2, shared,
        config or launch.moe_blocks or ROUTED_CONFIG, launch,
    )  # fmt: skip


# (gate/up rows per program, gate/up columns per load, its warps, down rows per program, its
# warps). gate/up: whole rows per load kept more bytes in flight than a 256-column loop.
# down: every slot's rows come in one load, so a program holds k x rows x I
# weights; `_experts` narrows the rows where that would pass DOWN_TILE elements (h-small:
# k = 10). Sweep (h-tiny, routed layer, 12 cold stacks in one graph): 16.7-17.8 us
# for every shape within one change of this one except 8 gate rows with 4 warps (21.2 us)
# and 512-column gate loads (19.0); the kernels before them took 19.2 us
# (bench/results/gpu_bench-h200-16-pdl.txt). With down reading before its wait,
# measured in the graphed h-tiny step (tok/s, batch 1; bench/results/gpu_bench-h200-29/30/31):
# from the sweep's shape (675.9), down with 4 rows 699.2 (1 row: 618.2, its 1,536 programs
# do not fit at once), then gate/up with fewer rows and warps per program, more programs:
# 2 rows at 2 warps 713.3, 1 row at 1 warp (3,072 programs) 727.6; beside that (h200-32)
# down with 1 row at 1 warp 731.6 against 726.1 with 4 rows at 4 warps. Down's programs
# must all be resident at once (1 row at 1 warp: 126 registers, 16 per SM, 2,112 >= 1,536;
# 1 row at 2 warps does not fit). With 8 tokens (`moe_decode`, batch 8, tok/s): 1 row at
# 1 warp 1,803, 2 rows at 2 warps 1,864, and down with 1 row at 1 warp beside that 1,899.5;
# the sweep's shape 1,727.9.
ROUTED_CONFIG = (1, 2048, 1, 1, 1)  # one token, routing in the kernels (moe_decode_routed)
CONFIG = (2, 2048, 2, 1, 1)  # tokens routed first (moe_decode)
DOWN_TILE = 16384  # the most weights (k x rows x I) one down program holds


def launch_shapes(
    tokens: int, k: int, experts: int, hidden: int, inner: int, shared: int, routed: bool,
    config: tuple[int, ...], down_early: bool = True,
) -> tuple[tuple, dict, tuple, dict]:  # fmt: skip
    """(grid, compile-time constants and warps) of gate/up, then of down, for `tokens` rows
    of k experts of `inner` rows over `hidden`, a shared MLP `shared` wide (0: none) and the
    router's top-k inside the kernels when `routed` (`experts` logits). One description for
    the launcher and bench/kernel_registers.py, which compiles the same kernels offline."""
    gate_rows, gate_cols, gate_warps, down_rows, down_warps = config
    common = dict(HIDDEN=hidden, INNER=inner, K=k, E=experts, ROUTE=routed,
                  BLOCK_E=triton.next_power_of_2(max(experts, k)))  # fmt: skip
    gate = dict(common, BLOCK_I=gate_rows, BLOCK_H=min(gate_cols, triton.next_power_of_2(hidden)),
                num_warps=gate_warps)  # fmt: skip
    slots, i_pad = triton.next_power_of_2(k), triton.next_power_of_2(inner)
    s_pad = max(64, triton.next_power_of_2(shared))
    rows = max(1, min(down_rows, DOWN_TILE // (slots * i_pad)))
    # Warps enough that a thread holds at most ~128 of the weights it asks for before its
    # wait: h-tiny's 1 warp would give h-small (k = 10, I = 768) 512 a thread and spills
    # (255 registers, 152 bytes of stack; bench/kernel_registers.py); 4 warps take 167.
    held = (slots * i_pad + s_pad) * rows // (32 * 128)
    warps = max(down_warps, triton.next_power_of_2(max(1, held)))
    down = dict(common, SHARED=shared, BLOCK_O=rows, SLOTS=slots, I_PAD=i_pad, S_PAD=s_pad,
                EARLY=down_early, num_warps=warps)  # fmt: skip
    gate_grid = (tokens * k, triton.cdiv(inner, gate_rows))
    return gate_grid, gate, (tokens, triton.cdiv(hidden, rows)), down


def _experts(x, logits, experts, weights, k, w1, w2, shared, config, launch):
    """The two kernels: gate/up per token copy (routing first where `logits` is given),
    then down with the k experts summed (and the shared MLP added)."""
    t = x.shape[0]
    i, h = w2.shape[2], w2.shape[1]
    assert w1.shape[1] == 2 * i and w1.shape[2] == h and x.shape == (t, h)
    assert w1.stride(2) == 1 and w2.stride(2) == 1
    x = x if x.stride(1) == 1 else x.contiguous()
    act = torch.empty(t * k, i, dtype=x.dtype, device=x.device)
    out = torch.empty(t, h, dtype=x.dtype, device=x.device)
    gate_up, shared_w = shared if shared is not None else (x, w2)
    s = shared_w.shape[1] if shared is not None else 0
    assert shared is None or (gate_up.shape[1] == 2 * s and shared_w.shape[0] == h)
    routed = logits is not None
    e = logits.shape[1] if routed else 1
    gate_grid, gate, down_grid, down = launch_shapes(
        t, k, e, h, i, s, routed, config, launch.down_early
    )
    pdl = triton_pdl.options(x, launch.pdl)
    logits, sl = (logits, logits.stride(0)) if routed else (x, 0)
    _gate_up_kernel[gate_grid](
        x, logits, experts, weights, w1, act, x.stride(0), sl, w1.stride(0), w1.stride(1),
        **gate, **pdl,
    )  # fmt: skip
    _down_kernel[down_grid](
        act, logits, experts, weights, w2, out, sl, w2.stride(0), w2.stride(1),
        gate_up, gate_up.stride(0), shared_w, shared_w.stride(0), **down, **pdl,
    )  # fmt: skip
    return out
