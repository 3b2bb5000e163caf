"""GPU speed of the runtime against transformers, same random weights (run on the device).

For each model: the device-to-device copy bandwidth measured in the same run, prefill tok/s
of one prompt, decode tok/s at several batch sizes, eager and replayed from a CUDA graph
(same state, same run), and decode's fraction of the memory roofline (bytes a step must
read - the weights it uses (for MoE the experts its tokens pick: at batch 1 the active
parameters), KV, state read and written - over the copy bandwidth); then transformers'
decode at batch 1 (its PyTorch path).

    python3 bench/gpu_bench.py [--models granite-4.0-h-micro] [--prompts 4096,32768]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    checkpoint,
    copy_bandwidth,
    drawn_on_gpu,
    profile_step,
    programs_per_sm,
    timed,
)

from granite_runtime.engine.batch import Batch
from granite_runtime.engine.cache import HybridCache
from granite_runtime.engine.graphs import GraphedDecoder
from granite_runtime.kernels import select
from granite_runtime.kernels.choice import KernelChoice
from granite_runtime.kernels.triton.options import DEFAULT, LaunchOptions
from granite_runtime.layers import ssd
from granite_runtime.model.loader import load_model
from granite_runtime.spec import memory
from granite_runtime.spec.config import GraniteConfig


def profile_graph_step(fn, steps: int = 20, top: int = 25) -> str:
    """Where a graphed step's time goes: each kernel inside the graph (CUPTI reports them
    one by one) summed per step, and the step's wall time against the sum of its kernels
    (the rest is launch gaps and tails between dependent kernels)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - started) / steps * 1e6
    per_name: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_name.setdefault(event.name, []).append(event.device_time)
    busy = sum(sum(v) for v in per_name.values()) / steps
    rows = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))
    lines = [
        f"step wall {wall:.0f} us (profiled), kernels {busy:.0f} us, "
        f"gaps {wall - busy:.0f} us; kernels per step "
        f"{sum(len(v) for v in per_name.values()) / steps:.0f}"
    ]
    for name, times in rows[:top]:
        lines.append(
            f"  {sum(times) / steps:8.1f} us/step {len(times) / steps:5.0f}x "
            f"{sum(times) / len(times):7.2f} us  {name[:90]}"
        )
    return "\n".join(lines)


def weights_read(c, batch: int) -> float:
    """bf16 weight bytes one decode step must read: all of a dense model; for MoE the
    shared weights plus the experts that `batch` tokens are expected to pick
    (E * (1 - (1 - k/E)^B) distinct of E, uniform routing as random weights give), so at
    batch 1 the active-parameter roofline."""
    total = memory.parameter_count(c)
    if not c.num_experts:
        return 2.0 * total
    active = memory.parameter_count(c, active_only=True)
    e, k = c.num_experts, c.top_k
    per_expert = (total - active) / (e - k)
    distinct = e * (1 - (1 - k / e) ** batch)
    return 2.0 * (active + (distinct - k) * per_expert)


def prefill(model, length: int, weights: int, profile: bool = False) -> dict:
    """One prompt of `length` tokens in one forward: tok/s, and peak memory against
    weights + cache + the memory model's activations for a chunk of that length."""
    c = model.config
    cache = HybridCache(c, 1, length + 8, torch.bfloat16, "cuda")
    prompt = torch.randint(0, 900, (1, length), device="cuda")
    model(prompt, Batch.make([0], [0], "cuda"), cache)  # warm-up: Triton compiles
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    # each call timed alone, the median kept: the 4k prompt (~60 ms a call) read 31-79k
    # tok/s across sessions on two calls, so the spread within a run is printed too
    def run():
        return model(prompt, Batch.make([0], [0], "cuda"), cache)

    calls = [timed(run, 1) for _ in range(7 if length <= 8192 else 3)]
    secs = statistics.median(calls)
    peak = torch.cuda.max_memory_allocated()
    predicted = weights + cache.nbytes() + memory.activation_bytes(c, length, 1)
    if profile:
        table = profile_step(run, 30)
        print(f"prefill {length} tokens, kernels (3 calls):\n{table}")
    return {
        **prefill_in_chunk_graphs(model, prompt, cache),
        f"prefill_{length}_tok_s": length / secs,
        f"prefill_{length}_calls_tok_s": [round(length / t) for t in calls],
        f"prefill_{length}_peak_gib": peak / 2**30,
        f"prefill_{length}_predicted_gib": predicted / 2**30,
        f"prefill_{length}_peak_vs_predicted": peak / predicted - 1,
        f"prefill_{length}_tuned": _tuned_configs(),
    }


def prefill_in_chunk_graphs(model, prompt, cache, chunk: int = 2048) -> dict:
    """The same prompt as the engine runs it with `--prefill-chunk chunk`: chunk graphs
    (engine/chunk_graphs.py) replayed one after another, the median of 5 runs."""
    from granite_runtime.engine.chunk_graphs import GraphedChunks

    length = prompt.shape[1]
    size = min(chunk, length)
    graphs = GraphedChunks(model, cache)
    graphs.capture([size])

    def run():
        for start in range(0, length, size):
            graphs(prompt[:, start : start + size], 0, start)

    secs = statistics.median([timed(run, 1) for _ in range(5)])
    return {f"prefill_{length}_chunk_graphs_{size}_tok_s": length / secs}


def _tuned_configs() -> str:
    """The block shapes the prefill kernels' autotuners kept so far, per shape key: the 4k
    prefill has read 50-78k tok/s across sessions with its code unchanged, and a noisy
    autotuning pick (timed without an L2 flush, triton_autotune.py) is one suspect."""
    from granite_runtime.kernels.triton import fused as triton_fused
    from granite_runtime.kernels.triton import scan as triton_ssd

    kernels = {"scan": triton_ssd._chunk_scan_kernel, "conv": triton_fused._conv_prefill_kernel}
    return "; ".join(
        f"{name} {key}: {config}"
        for name, kernel in kernels.items()
        for key, config in getattr(kernel, "cache", {}).items()
    )


def _resources(compiled) -> str:
    compiled._init_handles()
    warps = compiled.metadata.num_warps
    fit = programs_per_sm(warps, compiled.n_regs, compiled.metadata.shared)
    return (
        f"{warps} warps, {compiled.n_regs} regs, {compiled.n_spills} spills, "
        f"{compiled.metadata.shared} B shared -> {fit} programs/SM"
    )


def kernel_resources() -> str:
    """Registers, spills and shared memory of every decode kernel compiled so far, and how
    many of its programs fit on one SM: the one-row products are launched "persistent"
    (a fixed number of programs per SM), which only holds if that many are resident."""
    import triton

    from granite_runtime.kernels.triton import decode as triton_ops
    from granite_runtime.kernels.triton import fused as triton_fused
    from granite_runtime.kernels.triton import fused_linear as triton_fused_linear
    from granite_runtime.kernels.triton import moe as triton_moe

    lines, seen = [], []
    for module in (triton_fused_linear, triton_moe, triton_ops, triton_fused):
        for name in dir(module):
            fn = getattr(module, name)
            if not hasattr(fn, "device_caches"):  # an autotuner wraps the jit function
                fn = getattr(fn, "fn", None)  # (a jit function's own .fn is the Python one)
            caches = getattr(fn, "device_caches", None)
            if not name.startswith("_") or not hasattr(caches, "values"):
                continue
            seen.append(f"{name}[{sum(len(c[0]) for c in caches.values())}]")
            for device_cache in caches.values():
                for compiled in device_cache[0].values():
                    lines.append(f"{name}: {_resources(compiled)}")
    if not lines:  # a Triton whose caches are laid out otherwise: say what was found
        probe = triton_fused_linear._fused_linear_kernel
        return (
            f"no compiled kernels found in {', '.join(seen)} (triton {triton.__version__}; "
            f"{type(probe).__name__} has {[a for a in vars(probe) if 'cache' in a]})"
        )
    return "\n".join(sorted(set(lines)))


def _captured_with(model, cache, batch: int, choice: KernelChoice) -> GraphedDecoder:
    """A decode graph for `batch` rows captured with `choice` applied (the model's own
    choice is back afterwards; the graph keeps the kernels it captured)."""
    own = model.kernels
    select.apply(model, choice)
    try:
        graphed = GraphedDecoder(model, cache, batch)
        graphed.capture([batch])
    finally:
        select.apply(model, own)
    return graphed


def decode_switches(
    base: KernelChoice, batch: int, named: tuple[str, ...] = ()
) -> list[tuple[str, KernelChoice]]:
    """(name, choice) of the graphed decode variants measured beside `base`; a name
    `moe=4:2048:4:2:4` in `named` is a variant with those MoE kernel block shapes."""

    def launch(**fields) -> KernelChoice:
        return replace(base, launch=replace(base.launch, **fields))

    switches = [("no_pdl", launch(pdl=False))]  # kernels launched in turn
    for name in named:
        if name.startswith("moe="):
            switches.append((name, launch(moe_blocks=tuple(int(v) for v in name[4:].split(":")))))
    if batch == 1:  # the one-row fusions off, and their launch options
        switches += [
            ("unfused", replace(base, fused_linear=False)),
            ("attention_unfused", replace(base, fused_attention=False)),
            ("no_preload", launch(preload=False)),
            ("late_state", launch(early_state=False)),
            ("down_late", launch(down_early=False)),
        ]
    return switches


@torch.inference_mode()
def gkit(
    model,
    prompt_lens: list[int],
    batches: list[int],
    bandwidth: float,
    compiled_batches: tuple[int, ...] = (),
    profile_batch: int = 0,
    profile_prefill: int = 0,
    profile_graph: int = 0,
    only_variants: tuple[str, ...] = (),
    rounds: int = 1,
) -> dict:
    c = model.config
    out = {}
    weights = memory.parameter_count(c) * 2
    for length in prompt_lens:
        out.update(prefill(model, length, weights, profile=length == profile_prefill))
    for b in batches:
        cache = HybridCache(c, b, 1024, torch.bfloat16, "cuda")
        base = model.kernels
        # the PyTorch state update (and ops), for comparison; before the rows hold anything
        graphed_torch = _captured_with(model, cache, b, replace(base, triton=False))
        graphed = GraphedDecoder(model, cache, b)
        graphed.capture([b])
        tokens = torch.randint(0, 900, (b, 1), device="cuda")
        batch = Batch.make(list(range(b)), [512] * b, "cuda")
        slots, starts = list(range(b)), [512] * b
        moved = weights_read(c, b) + b * (
            512 * memory.kv_bytes_per_token(c) + 2 * memory.state_bytes_per_sequence(c)
        )
        variants = [("eager", lambda batch=batch, cache=cache, t=tokens: model(t, batch, cache))]
        switches = decode_switches(base, b, only_variants) if graphed.supports(b) else []
        for name, choice in switches:
            if only_variants and name not in only_variants:
                continue
            other = _captured_with(model, cache, b, choice)
            variants.append(
                (f"graph_{name}", lambda g=other, t=tokens, s=slots, p=starts: g(t, s, p))
            )
        if graphed.supports(b):  # MoE models graph only batches whose experts fit (graphs.py)
            variants += [
                (
                    "graph_torch_state",
                    lambda g=graphed_torch, t=tokens, s=slots, p=starts: g(t, s, p),
                ),
                ("graph", lambda g=graphed, t=tokens, s=slots, p=starts: g(t, s, p)),
            ]
        if b in compiled_batches:  # inductor's fused kernels inside our graph
            # inductor fuses the state update itself; our Triton kernel inside a compiled
            # graph faulted (illegal address, torch 2.11), so it is off for this variant
            select.apply(model, replace(base, triton=False))
            fused = GraphedDecoder(model, cache, b, step=torch.compile(model, dynamic=False))
            started = time.perf_counter()
            fused.capture([b])
            select.apply(model, base)
            out[f"compile_b{b}_s"] = time.perf_counter() - started
            variants.append(
                ("compiled_graph", lambda g=fused, t=tokens, s=slots, p=starts: g(t, s, p))
            )
        if b == 1:
            out["profile_kernel_resources"] = kernel_resources()
        if b == profile_batch:
            out[f"profile_b{b}_graph_kernels"] = profile_step(variants[0][1])
        if b == profile_graph and graphed.supports(b):
            out[f"profile_b{b}_graphed_step"] = profile_graph_step(variants[-1][1])
        steps = {name: [] for name, _ in variants}
        for _ in range(rounds):  # variants interleaved, so a drift in clocks hits them all
            for name, fn in variants:
                steps[name].append(timed(fn, 50))
        for name, times in steps.items():
            step = statistics.median(times)
            out[f"decode_b{b}_{name}"] = {
                "tok_s": b / step,
                "step_ms": step * 1e3,
                "roofline_fraction": moved / step / 1e9 / bandwidth,
                "rounds_tok_s": [round(b / t, 1) for t in times],
            }
        del graphed, graphed_torch, cache
        torch.cuda.empty_cache()
    from granite_runtime.kernels.triton import gemv as triton_gemv

    # which path triton_gemv.linear kept per (rows, out, in) shape, measured at the warm-up
    out["gemv_picked"] = {f"{k[0]}x{k[1]}x{k[2]}": str(v) for k, v in triton_gemv.CHOICE.items()}
    triton_gemv.CHOICE.clear()
    return out  # the model and caches are freed with this frame


@torch.inference_mode()
def transformers_run(path: Path, prompt_lens: list[int]) -> dict:
    """transformers on the same weights: prefill tok/s and peak memory per prompt length,
    then decode at batch 1. It runs mamba_ssm's Triton kernels (SSD scan, state update)
    when `use_peer_kernels` put them on sys.path before this import, else its PyTorch path."""
    from transformers import GraniteMoeHybridForCausalLM

    model = GraniteMoeHybridForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    out = {}
    for length in prompt_lens:
        ids = torch.randint(0, 900, (1, length), device="cuda")
        model(ids, use_cache=True)  # warm-up: Triton compiles
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        secs = timed(lambda ids=ids: model(ids, use_cache=True), 2)
        out[f"prefill_{length}_tok_s"] = length / secs
        out[f"prefill_{length}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    ids = torch.randint(0, 900, (1, 512), device="cuda")
    first = model(ids, use_cache=True)
    cache = getattr(first, "cache", None) or first.past_key_values
    token = first.logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(16):
        step = model(token, cache=cache, use_cache=True)
        token = step.logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    out["decode_b1_tok_s"] = 16 / (time.perf_counter() - t)
    model = cache = first = step = None  # frees the weights before gkit's next model
    torch.cuda.empty_cache()
    return out


def use_peer_kernels(folder: str | None) -> bool:
    """Put a git-ignored copy of mamba_ssm's Triton files (`folder`/mamba_ssm/..., see
    bench/NOTES.md) first on sys.path, so transformers and the kernel comparison import it;
    it is never installed (its package builds CUDA extensions)."""
    if not folder:
        return False
    import sys

    sys.path.insert(0, str(Path(folder).resolve()))
    return True


def _peer_state_update(enabled: bool):
    if not enabled:
        return None
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    return selective_state_update


def _state_inputs(h: int, p: int, n: int, g: int, b: int) -> dict:
    return {
        "x": torch.randn(b, h, p, device="cuda"),
        "dt": torch.rand(b, h, device="cuda") * 0.1,
        "A": -torch.rand(h, device="cuda"),
        "Bm": torch.randn(b, g, n, device="cuda"),
        "Cm": torch.randn(b, g, n, device="cuda"),
        "D": torch.randn(h, device="cuda"),
        "state_pool": torch.randn(b + 1, h, p, n, device="cuda"),
        "slots": torch.arange(b, device="cuda").flip(0),  # not consecutive: the general case
    }


def _peer_call(peer, i: dict):
    """The same inputs in the layout mamba_ssm's API takes (dt, A, D tied over head_dim)."""
    b, h, p = i["x"].shape
    n = i["Bm"].shape[-1]
    dt = i["dt"][:, :, None].expand(b, h, p)
    a = i["A"][:, None, None].expand(h, p, n)
    d = i["D"][:, None].expand(h, p)
    bias = torch.zeros(h, device="cuda")[:, None].expand(h, p)
    return lambda: peer(
        i["state_pool"],
        i["x"],
        dt,
        a,
        i["Bm"],
        i["Cm"],
        D=d,
        dt_bias=bias,
        state_batch_indices=i["slots"],
    )


def _time_state_update(h: int, p: int, n: int, g: int, b: int, peer=None) -> dict:
    from triton.testing import do_bench

    from granite_runtime.kernels.triton.decode import ssd_step

    i = _state_inputs(h, p, n, g, b)

    def torch_path():
        y, new = ssd.step(
            i["x"], i["dt"], i["A"], i["Bm"], i["Cm"], i["D"], i["state_pool"][i["slots"]]
        )
        i["state_pool"][i["slots"]] = new
        return y

    variants = [("torch", torch_path), ("triton", lambda: ssd_step(**i))]
    variants += [(f"triton_block{k}", lambda k=k: ssd_step(**i, block_p=k)) for k in (4, 8, 32)]
    out = {}
    if peer is not None:
        variants.append(("mamba_ssm", _peer_call(peer, i)))
        before = i["state_pool"].clone()
        theirs = variants[-1][1]()
        i["state_pool"].copy_(before)
        ours = ssd_step(**i)
        out[f"state_update_b{b}_ours_vs_mamba_ssm_rel"] = (
            (ours - theirs).norm() / theirs.norm()
        ).item()
    state_bytes = 2 * b * h * p * n * 4  # read once, written once
    for name, fn in variants:
        ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
        out[f"state_update_b{b}_{name}"] = {"us": ms * 1e3, "gb_s": state_bytes / ms / 1e6}
    return out


@torch.inference_mode()
def state_update_kernels(config, batches=(1, 64), peer: bool = False) -> dict:
    """The decode state update alone at the model's shapes: the Triton kernel against the
    PyTorch path the eager step runs (gather, update, scatter) and mamba_ssm's kernel."""
    c = config
    peer = _peer_state_update(peer)
    out = {}
    for b in batches:
        out.update(
            _time_state_update(
                c.mamba_heads, c.mamba_head_dim, c.mamba_state, c.mamba_groups, b, peer
            )
        )
    return out


@torch.inference_mode()
def moe_decode_kernels(config, copies: int = 12, sweep: bool = False) -> dict:
    """One MoE layer's experts at decode, the model's shapes, `copies` distinct expert stacks
    in one CUDA graph (cold weights, as in a step): at 1 token the routed path batch 1 takes
    (top-k inside gate/up, the shared MLP inside down), at 8 tokens moe_decode after route.
    GB/s counts the chosen experts' (and shared MLP's) weight bytes once. With `sweep`, each
    kernel's block shape varied one at a time from triton_moe.ROUTED_CONFIG."""
    from granite_runtime.kernels.triton import moe as triton_moe

    c, out, dt = config, {}, torch.bfloat16
    if not c.num_experts:
        return out
    e, k, h, i, s = c.num_experts, c.top_k, c.hidden_size, c.expert_size, c.shared_size
    stacks = [
        (
            torch.randn(e, 2 * i, h, device="cuda", dtype=dt) * 0.02,
            torch.randn(e, h, i, device="cuda", dtype=dt) * 0.02,
            torch.randn(h, s, device="cuda", dtype=dt) * 0.02,
        )
        for _ in range(copies)
    ]
    x1 = torch.randn(1, h, device="cuda", dtype=dt)
    logits_gate_up = torch.randn(1, e + 2 * s, device="cuda", dtype=dt)
    x8 = torch.randn(8, h, device="cuda", dtype=dt)
    experts8, weights8 = triton_moe.route(x8, torch.randn(e, h, device="cuda", dtype=dt), k)
    read1 = (k * 3 * h * i + 3 * h * s) * 2
    read8 = (experts8.unique().numel() * 3 * h * i) * 2
    base = triton_moe.ROUTED_CONFIG
    configs = [base]
    if sweep:
        for g in ((2, 2048, 4), (8, 2048, 4), (4, 2048, 8), (4, 512, 4), (8, 2048, 8)):
            configs.append((*g, *base[3:]))
        for d in ((1, 4), (1, 2), (2, 8), (4, 4), (4, 8)):
            configs.append((*base[:3], *d))
    for cfg in configs:
        us = _cold_graph_us([
            partial(triton_moe.moe_decode_routed, x1, logits_gate_up, e, k, *w, cfg)
            for w in stacks
        ])  # fmt: skip
        out[f"moe_t1_routed_{cfg}"] = {"us": us, "gb_s": read1 / us / 1e3}
    in_turn = LaunchOptions(pdl=False)  # each layer's kernels launched after the one before
    us = _cold_graph_us([
        partial(triton_moe.moe_decode_routed, x1, logits_gate_up, e, k, *w, base, launch=in_turn)
        for w in stacks
    ])  # fmt: skip
    out[f"moe_t1_routed_{base}_no_pdl"] = {"us": us, "gb_s": read1 / us / 1e3}
    us = _cold_graph_us([
        partial(triton_moe.moe_decode, x8, experts8, weights8, w[0], w[1]) for w in stacks
    ])  # fmt: skip
    out["moe_t8_in_place"] = {"us": us, "gb_s": read8 / us / 1e3}
    del stacks
    return out


def _cold_graph_us(calls, replays: int = 10) -> float:
    """us per call of `calls` (closures over distinct weights) captured in one CUDA graph and
    replayed: each weight read once per replay, cold from HBM as in a decode step, no launch
    cost but the graph's own."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # Triton compiles, cuBLAS picks its kernels
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return sorted(times)[len(times) // 2]


# (BLOCK_N, programs per SM, num_warps, num_stages), as triton_fused_linear.config_for
FUSED_SWEEP = [
    (bn, per_sm, w, s) for bn in (1, 2, 4) for per_sm in (4, 8) for w, s in ((8, 3), (8, 4))
] + [(2, 4, 4, 3), (8, 4, 8, 3), (2, 2, 8, 3), (4, 2, 8, 3), (8, 2, 8, 3), (4, 2, 4, 3)]


@torch.inference_mode()
def fused_linear_kernels(config, copies: int = 24, sweep: bool = False) -> dict:
    """Each one-row product of a decode step with its norm or gate (triton_fused_linear)
    against the separate path (the triton_fused norm/gate kernel, then cuBLAS), `copies`
    distinct weights per shape in one CUDA graph so every weight is read cold; GB/s of
    weight bytes. With `sweep`, every block shape in FUSED_SWEEP too (what config_for picks
    from)."""
    import triton

    from granite_runtime.kernels.triton import fused as triton_fused
    from granite_runtime.kernels.triton import fused_linear as fl

    c, out, dt, eps = config, {}, torch.bfloat16, 1e-5
    h, inner, shared = c.hidden_size, c.mamba_inner, c.shared_size
    proj = inner + c.mamba_conv_dim + c.mamba_heads
    vec = lambda n, d=dt: torch.randn(1, 1, n, device="cuda", dtype=d)  # noqa: E731
    x, delta, nw = vec(h), vec(h), vec(h).view(-1)
    y, z, gnw, gate_up = vec(inner, torch.float32), vec(inner), vec(inner).view(-1), vec(2 * shared)
    norm_in = partial(fl.norm_linear, x, delta, 0.2, nw, eps)
    shapes = {  # name: (rows, inner, fused call, separate call)
        "mamba_in": (proj, h, lambda w, o=DEFAULT: norm_in(w, launch=o),
                     lambda w: F.linear(triton_fused.add_rms_norm(x, delta, 0.2, nw, eps)[1], w)),
        "mamba_out": (h, inner, lambda w, o=DEFAULT: fl.gated_norm_linear(y, z, gnw, eps, w, o),
                      lambda w: F.linear(triton_fused.gated_rms_norm(y, z, gnw, eps, 1), w)),
        "mlp_in": (2 * shared, h, lambda w, o=DEFAULT: norm_in(w, launch=o),
                   lambda w: F.linear(triton_fused.add_rms_norm(x, delta, 0.2, nw, eps)[1], w)),
        "mlp_out": (h, shared, lambda w, o=DEFAULT: fl.silu_mul_linear(gate_up, w, o),
                    lambda w: F.linear(triton_fused.silu_mul(gate_up), w)),
    }  # fmt: skip
    for name, (n, k, fused, separate) in shapes.items():
        weights = [torch.randn(n, k, device="cuda", dtype=dt) * 0.02 for _ in range(copies)]
        gb = 2 * n * k / 1e3
        row = {"separate_us": _cold_graph_us([partial(separate, w) for w in weights])}
        row["fused_us"] = _cold_graph_us([partial(fused, w) for w in weights])
        row["config"] = str(fl.config_for(n, k))
        in_turn = LaunchOptions(pdl=False)  # each launched after the one before has ended
        row["fused_no_pdl_us"] = _cold_graph_us([partial(fused, w, in_turn) for w in weights])
        if sweep:
            for cfg in [c for c in FUSED_SWEEP if c[0] * triton.next_power_of_2(k) <= 16384]:
                forced = LaunchOptions(linear_blocks=cfg)
                row[str(cfg)] = _cold_graph_us([partial(fused, w, forced) for w in weights])
            best = min((v, key) for key, v in row.items() if key.startswith("("))
            row["best"], row["best_us"] = best[1], best[0]
        row["separate_gb_s"], row["fused_gb_s"] = gb / row["separate_us"], gb / row["fused_us"]
        out[f"fused_{name}"] = row
        del weights
    return out


@torch.inference_mode()
def gemv_kernels(config, rows=(1, 8)) -> dict:
    """Each decode-step weight shape of the model: cuBLAS (F.linear) against triton_gemv's
    block shapes, in GB/s of weight bytes read; which one `triton_gemv.linear` would keep."""
    from triton.testing import do_bench

    from granite_runtime.kernels.triton import gemv as triton_gemv

    c, out = config, {}
    shapes = {
        "mamba_in": (2 * c.mamba_inner + 2 * c.mamba_groups * c.mamba_state + c.mamba_heads,
                     c.hidden_size),
        "mamba_out": (c.hidden_size, c.mamba_inner),
        "mlp_in": (2 * c.shared_size, c.hidden_size),
        "mlp_out": (c.hidden_size, c.shared_size),
        "attn_q": (c.num_heads * c.head_dim, c.hidden_size),
        "lm_head": (c.vocab_size, c.hidden_size),
    }  # fmt: skip
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for m in rows:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            timings = {"cublas": do_bench(lambda x=x, w=w: F.linear(x, w), rep=100)}
            for cfg in triton_gemv.CONFIGS:
                if m > 1 and cfg[0] < 16:
                    continue
                timings[cfg] = do_bench(lambda x=x, w=w, cfg=cfg: triton_gemv.gemv(x, w, cfg))
            best = min((t, str(k_)) for k_, t in timings.items() if k_ != "cublas")
            out[f"gemv_{name}_m{m}"] = {
                "cublas_gb_s": 2 * n * k / timings["cublas"] / 1e6,
                "triton_gb_s": 2 * n * k / best[0] / 1e6,
                "triton_config": best[1],
            }
    return out


def kernel_timings(config, which: str, peer: bool) -> dict:
    chosen, out = set(which.split(",")), {}
    if "state" in chosen:
        out.update(state_update_kernels(config, peer=peer))
    if chosen & {"moe", "sweep", "moe-sweep"}:
        out.update(moe_decode_kernels(config, sweep=bool(chosen & {"sweep", "moe-sweep"})))
    if "gemv" in chosen:
        out.update(gemv_kernels(config))
    if "fused" in chosen or "sweep" in chosen:
        out.update(fused_linear_kernels(config, sweep="sweep" in chosen))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="granite-4.0-h-micro")
    ap.add_argument("--root", default="/tmp/gkit-models")
    ap.add_argument("--prompts", default="4096,32768", help="prefill prompt lengths")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--compiled", default="", help="batch sizes to also run torch.compile'd")
    ap.add_argument("--profile", type=int, default=0, help="profile the eager step at this B")
    ap.add_argument(
        "--profile-graph", type=int, default=0, help="profile the graphed step at this B"
    )
    ap.add_argument(
        "--kernels",
        default="state,moe,fused",
        help="per-kernel timings to run: any of state, moe, moe-sweep (moe with other block "
        "shapes), gemv, fused, sweep (moe-sweep and fused with every block shape); empty for "
        "none",
    )
    ap.add_argument(
        "--variants",
        default="",
        help="comma-separated graphed decode variants to run beside the default (all when "
        "empty): no_pdl, unfused, attention_unfused, no_preload (the fused products ask "
        "for their first weights after the wait), late_state (the state kernels read their "
        "pools after the wait), down_late (the MoE down kernel reads its experts' rows after "
        "the wait), moe=R:C:W:O:V (the MoE kernels' block shapes: gate/up rows, columns, "
        "warps, down rows, warps)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="time every decode variant this many times, interleaved, and report the median",
    )
    ap.add_argument("--profile-prefill", type=int, default=0, help="profile this prompt length")
    ap.add_argument("--no-transformers", action="store_true", help="skip the peer's decode")
    ap.add_argument(
        "--draw-on-gpu",
        action="store_true",
        help="random weights drawn in GPU memory, no checkpoint written (h-small: its 64 GB "
        "would not fit the device's disk); the peer, which loads a checkpoint, is skipped",
    )
    ap.add_argument(
        "--mamba-ssm",
        default="",
        help="folder holding a copy of mamba_ssm/ (its ops/triton and utils files): "
        "transformers then runs its Triton kernels, and the state update is compared",
    )
    ap.add_argument(
        "--kernels-only",
        action="store_true",
        help="per-kernel timings only (catalog shapes, no checkpoint)",
    )
    args = ap.parse_args()
    peer = use_peer_kernels(args.mamba_ssm)
    bandwidth = copy_bandwidth()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bandwidth:.0f} GB/s")
    report = {"card": torch.cuda.get_device_name(), "copy_gb_s": bandwidth}
    for name in args.models.split(","):
        path = Path(args.root) / name
        if args.kernels_only:  # shapes only: the catalog's config, no weights to write
            catalog = Path(__file__).resolve().parents[1] / "granite_ops_kit" / "catalog"
            config = GraniteConfig.from_dict(json.loads((catalog / f"{name}.json").read_text()))
            print(name)
            kernels = kernel_timings(config, args.kernels, peer)
            for key, v in kernels.items():
                print(f"  {key}: {v}")
            continue
        if args.draw_on_gpu:
            path, model = None, drawn_on_gpu(name)
        else:  # weights drawn on the GPU and saved with safetensors: ~20 s where the
            # demo-model writer (numpy, one core) took 109 s for h-micro
            path = checkpoint(name, Path(args.root))
            model = load_model(path, "bfloat16", "cuda")
        r = gkit(
            model,
            [int(v) for v in args.prompts.split(",") if v],
            [int(b) for b in args.batches.split(",")],
            bandwidth,
            tuple(int(b) for b in args.compiled.split(",") if b),
            args.profile,
            args.profile_prefill,
            args.profile_graph,
            tuple(v for v in args.variants.split(",") if v),
            args.rounds,
        )
        for key in [k for k in r if k.startswith("profile_")]:
            print(f"{key}:\n{r.pop(key)}")
        config = model.config
        del model
        torch.cuda.empty_cache()
        prompt_lens = [int(v) for v in args.prompts.split(",") if v]
        peer_name = "transformers + mamba_ssm" if peer else "transformers (PyTorch path)"
        no_peer = args.no_transformers or path is None  # the peer loads a checkpoint
        theirs = {} if no_peer else transformers_run(path, prompt_lens)
        r.update({f"transformers_{k}": v for k, v in theirs.items()})
        r.update(kernel_timings(config, args.kernels, peer))
        for key, v in r.items():
            if key.startswith("state_update") and isinstance(v, dict):
                print(f"  {key}: {v['us']:.1f} us, {v['gb_s']:,.0f} GB/s of state traffic")
            if key.startswith("gemv_") and "cublas_gb_s" in v:
                print(
                    f"  {key}: cuBLAS {v['cublas_gb_s']:,.0f} GB/s, Triton "
                    f"{v['triton_gb_s']:,.0f} GB/s ({v['triton_config']})"
                )
            if key.startswith("fused_"):
                sweep = f", best of sweep {v['best']} {v['best_us']:.1f} us" if "best" in v else ""
                print(
                    f"  {key}: norm/gate kernel + cuBLAS {v['separate_us']:.1f} us "
                    f"({v['separate_gb_s']:,.0f} GB/s), fused {v['fused_us']:.1f} us "
                    f"({v['fused_gb_s']:,.0f} GB/s) at {v['config']}{sweep}; without "
                    f"PDL {v['fused_no_pdl_us']:.1f} us"
                )
            if key.startswith("moe_t"):
                print(f"  {key}: {v['us']:.1f} us, {v['gb_s']:,.0f} GB/s of expert weights")
        report[name] = r
        for length in [v for v in args.prompts.split(",") if v]:
            graphed = {k: round(v) for k, v in r.items() if k.startswith(f"prefill_{length}_chunk")}
            print(f"{name}: prefill {length} tokens through chunk graphs: {graphed}")
            print(
                f"{name}: prefill {length} tokens {r[f'prefill_{length}_tok_s']:,.0f} tok/s "
                f"(calls: {r[f'prefill_{length}_calls_tok_s']}), "
                f"peak {r[f'prefill_{length}_peak_gib']:.2f} GiB "
                f"({r[f'prefill_{length}_peak_vs_predicted']:+.1%} of weights + cache + "
                f"one chunk's activations); tuned {r[f'prefill_{length}_tuned']}"
            )
        print(f"  gemv picked: {r.pop('gemv_picked')}")
        for key, v in r.items():
            if key.startswith("decode_b"):
                print(
                    f"  {key}: {v['tok_s']:,.1f} tok/s, {v['step_ms']:.1f} ms/step, "
                    f"{v['roofline_fraction']:.1%} of the memory roofline"
                    + (f" (rounds: {v['rounds_tok_s']})" if len(v["rounds_tok_s"]) > 1 else "")
                )
        for key, v in theirs.items():
            mine = r.get(key.replace("decode_b1_tok_s", "decode_b1_graph"), None)
            mine = mine["tok_s"] if isinstance(mine, dict) else mine
            ratio = f"; gkit / peer = {mine / v:.2f}x" if "tok_s" in key and mine else ""
            print(f"  {peer_name} {key}: {v:,.2f}{ratio}")
        report[name] = r
    print(json.dumps(report))


if __name__ == "__main__":
    main()
