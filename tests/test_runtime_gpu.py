"""The runtime on a CUDA GPU against its own CPU reference path (run on the device machine)."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from granite_runtime.engine.batch import Batch  # noqa: E402
from granite_runtime.engine.cache import HybridCache  # noqa: E402
from granite_runtime.engine.engine import Engine  # noqa: E402
from granite_runtime.engine.sampling import SamplingParams  # noqa: E402
from granite_runtime.engine.tokenizer import TextCodec  # noqa: E402
from granite_runtime.kernels import select  # noqa: E402
from granite_runtime.kernels.triton.options import LaunchOptions  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402

pytestmark = pytest.mark.gpu


def _logits(path, dtype, device, ids):
    model = load_model(path, dtype, device)
    cache = HybridCache(model.config, 1, ids.shape[1], model.lm_head.weight.dtype, device)
    with torch.no_grad():
        return model(ids.to(device), Batch.make([0], [0], device), cache, all_logits=True).cpu()


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture
def poisoned_outputs():
    """Every torch.empty the kernels' wrappers make is filled with NaN (PyTorch's
    deterministic mode fills uninitialised memory), so an element a kernel forgets to
    write turns the relative error into NaN, which never passes."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense"])
def test_cuda_fp32_matches_cpu_reference(fixture, request):
    path = request.getfixturevalue(fixture)
    ids = torch.randint(0, 1000, (1, 100), generator=torch.Generator().manual_seed(0))
    cpu = _logits(path, "float32", "cpu", ids)
    gpu = _logits(path, "float32", "cuda", ids)
    assert _rel(gpu, cpu) < 1e-4


@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense"])
def test_cuda_bf16_is_within_bf16_tolerance(fixture, request):
    path = request.getfixturevalue(fixture)
    ids = torch.randint(0, 1000, (1, 100), generator=torch.Generator().manual_seed(1))
    assert _rel(_logits(path, "bfloat16", "cuda", ids), _logits(path, "float32", "cpu", ids)) < 3e-2


def test_weights_live_in_one_allocation(tiny_hybrid):
    model = load_model(tiny_hybrid, "bfloat16", "cuda")
    ptrs = [p.untyped_storage().data_ptr() for p in model.parameters()]
    assert len(set(ptrs)) == 1


def test_cuda_engine_batch_equals_alone(tiny_hybrid):
    model, codec = load_model(tiny_hybrid, "float32", "cuda"), TextCodec.from_dir(tiny_hybrid)
    engine = Engine(model, codec, max_num_seqs=4, max_model_len=256)
    prompts = [list(range(3, 3 + n)) for n in (7, 50, 120)]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    alone = [engine.generate(p, params).output_ids for p in prompts]
    together = [engine.submit(p, params) for p in prompts]
    while engine.has_work():
        engine.step()
    assert [s.output_ids for s in together] == alone


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense"])
def test_graphed_decode_equals_eager(fixture, padded, request):
    """A CUDA-graph decode step gives the eager step's logits and leaves the same state.
    Padded: the 3 rows replay the 4-row graph, the extra row on the pad slot (5), and the
    unused slot 4 is left untouched."""
    from granite_runtime.engine.graphs import GraphedDecoder

    path = request.getfixturevalue(fixture)
    model = load_model(path, "float32", "cuda")
    prompts = [
        torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(n))
        for n in (9, 30, 17)
    ]
    caches, outs = [], []
    for graphed in (False, True):
        cache = HybridCache(model.config, 6 if padded else 4, 64, torch.float32, "cuda")
        dec = GraphedDecoder(model, cache, 4, pad_slot=5 if padded else None)
        if graphed:
            dec.capture([4] if padded else [3])
            assert dec.size_for(3) == (4 if padded else 3) and dec.size_for(5) is None
        slots, starts, tokens = [2, 0, 3], [], []
        with torch.no_grad():
            for slot, ids in zip(slots, prompts, strict=True):
                cache.reset(slot)
                logits = model(ids.cuda(), Batch.make([slot], [0], "cuda"), cache)
                starts.append(ids.shape[1])
                tokens.append(logits[0, -1].argmax().item())
            if cache.ssm.numel():
                cache.ssm[:, 1] = 7.0  # a slot no row uses: must stay as it is
            steps = []
            for _ in range(5):  # greedy decode, all three rows together
                t = torch.tensor([[x] for x in tokens], device="cuda")
                if graphed:
                    logits = dec(t, slots, starts).clone()
                    assert logits.shape[0] == 3
                else:
                    logits = model(t, Batch.make(slots, starts, "cuda"), cache)
                steps.append(logits[:, -1].cpu())
                tokens = logits[:, -1].argmax(-1).tolist()
                starts = [s + 1 for s in starts]
        outs.append(torch.stack(steps))
        caches.append(cache)
    assert _rel(outs[1], outs[0]) < 1e-5
    for name in ("ssm", "k"):  # a dense model has no Mamba state, a hybrid few KV layers
        graphed_state, eager_state = getattr(caches[1], name), getattr(caches[0], name)
        if eager_state.numel():
            assert _rel(graphed_state[:, [0, 2, 3]], eager_state[:, [0, 2, 3]]) < 1e-5
    if caches[1].ssm.numel():
        assert torch.all(caches[1].ssm[:, 1] == 7.0)


@pytest.mark.parametrize("rows", [1, 3])
def test_early_launched_kernels_change_nothing(tiny_hybrid, rows):
    """Graphed bf16 decode with programmatic dependent launch (triton_pdl: each kernel placed
    on the GPU before the one before it ends, waiting there) gives bit for bit the
    logits and Mamba/KV state of the same graph launched kernel after kernel, over 8 greedy
    steps: a kernel that read or wrote before its wait would race and break the equality.
    Batch 1 runs the fused one-row products and the routed MoE kernels, batch 3 the rest."""
    from granite_runtime.engine.graphs import GraphedDecoder
    from granite_runtime.kernels.triton import pdl as triton_pdl

    probe, hopper = torch.zeros(1, device="cuda"), torch.cuda.get_device_capability()[0] >= 9
    model = load_model(tiny_hybrid, "bfloat16", "cuda")
    runs, early = [], model.kernels
    assert early.launch.pdl
    for enabled in (True, False):
        choice = dataclasses.replace(early, launch=dataclasses.replace(early.launch, pdl=enabled))
        select.apply(model, choice)
        try:
            # the first run really launches early on Hopper (else it compares a run to
            # itself); before Hopper the attribute is never set and both launch in turn
            on = {"PDL": True, "launch_pdl": True} if enabled and hopper else {"PDL": False}
            assert triton_pdl.options(probe, choice.launch.pdl) == on
            cache = HybridCache(model.config, rows, 64, torch.bfloat16, "cuda")
            dec = GraphedDecoder(model, cache, rows)
            dec.capture([rows])
            slots, starts = list(range(rows)), [0] * rows
            tokens, steps = [[5 + r] for r in range(rows)], []
            with torch.no_grad():
                for _ in range(8):
                    logits = dec(torch.tensor(tokens, device="cuda"), slots, starts).clone()
                    steps.append(logits[:, -1].float().cpu())
                    tokens = [[t] for t in logits[:, -1].argmax(-1).tolist()]
                    starts = [s + 1 for s in starts]
        finally:
            select.apply(model, early)
        runs.append((torch.stack(steps), cache))
    (early, early_cache), (plain, plain_cache) = runs
    assert torch.isfinite(early).all() and early.abs().max() > 0
    assert torch.equal(early, plain)
    for name in ("ssm", "conv", "k", "v"):
        assert torch.equal(getattr(early_cache, name), getattr(plain_cache, name)), name


def test_engine_uses_graphs_on_cuda(tiny_hybrid):
    model, codec = load_model(tiny_hybrid, "float32", "cuda"), TextCodec.from_dir(tiny_hybrid)
    engine = Engine(model, codec, max_num_seqs=3, max_model_len=128)
    assert engine.graphs is not None and sorted(engine.graphs.graphs) == [1, 2, 3]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = engine.generate(list(range(5, 40)), params).output_ids
    eager = Engine(
        load_model(tiny_hybrid, "float32", "cuda"), codec, max_num_seqs=3, max_model_len=128
    )
    eager.graphs = None
    assert eager.generate(list(range(5, 40)), params).output_ids == alone


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("h", "g", "p", "n"), [(64, 1, 64, 128), (12, 3, 20, 48)])
def test_triton_ssd_step_matches_the_reference(state_dtype, h, g, p, n, poisoned_outputs):
    """Fresh random inputs, scattered slots, groups > 1 and sizes that are not powers of 2."""
    from granite_runtime.kernels.triton.decode import ssd_step
    from granite_runtime.layers import ssd

    gen = torch.Generator(device="cuda").manual_seed(h * p + n)
    b, s = 3, 6
    slots = torch.tensor([4, 0, 2], device="cuda")

    def rand(*shape):
        return torch.randn(*shape, device="cuda", generator=gen)

    x, dt, bm, cm = rand(b, h, p), rand(b, h).abs() * 0.1, rand(b, g, n), rand(b, g, n)
    a, d = -rand(h).abs(), rand(h)
    pool = rand(s, h, p, n).to(state_dtype)
    expected_pool = pool.float().clone()
    y_ref, new = ssd.step(x, dt, a, bm, cm, d, expected_pool[slots])
    expected_pool[slots] = new
    got_pool = pool.clone()
    y = ssd_step(x, dt, a, bm, cm, d, got_pool, slots)
    tol = 1e-5 if state_dtype == torch.float32 else 1e-2
    assert _rel(y, y_ref) < tol
    assert _rel(got_pool.float(), expected_pool) < tol
    untouched = [i for i in range(s) if i not in slots.tolist()]
    assert torch.equal(got_pool[untouched], pool[untouched])


@pytest.mark.parametrize("limit", [(0.0, float("inf")), (0.01, 0.5)])
@pytest.mark.parametrize(("h", "g", "p", "n"), [(64, 1, 64, 128), (12, 3, 20, 48)])
def test_triton_ssd_step_applies_softplus_to_raw_dt(limit, h, g, p, n, poisoned_outputs):
    """dt straight from in_proj (softplus(dt + dt_bias), clamped, inside the kernel), and
    x, B, C, dt as rows of one wide tensor, as the projections leave them."""
    import torch.nn.functional as F

    from granite_runtime.kernels.triton.decode import ssd_step
    from granite_runtime.layers import ssd

    gen = torch.Generator(device="cuda").manual_seed(h + n)
    b, s = 3, 6
    proj = torch.randn(b, 5 + h * p + 2 * g * n + h, device="cuda", generator=gen)
    x = proj[:, 5 : 5 + h * p].view(b, h, p)
    bm = proj[:, 5 + h * p : 5 + h * p + g * n].view(b, g, n)
    cm = proj[:, 5 + h * p + g * n : 5 + h * p + 2 * g * n].view(b, g, n)
    raw, bias = proj[:, -h:] * 3, torch.randn(h, device="cuda", generator=gen)
    a, d = -torch.rand(h, device="cuda", generator=gen) - 0.1, torch.randn(h, device="cuda")
    pool = torch.randn(s, h, p, n, device="cuda", generator=gen)
    slots = torch.tensor([4, 0, 2], device="cuda")
    expected_pool = pool.clone()
    dt = F.softplus(raw + bias).clamp(*limit)
    y_ref, new = ssd.step(x, dt, a, bm, cm, d, expected_pool[slots])
    expected_pool[slots] = new
    y = ssd_step(x, raw, a, bm, cm, d, pool, slots, dt_bias=bias, dt_limit=limit)
    assert _rel(y, y_ref) < 1e-5
    assert _rel(pool, expected_pool) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize(("h", "g", "p", "n", "length", "chunk"),
    [(64, 1, 64, 128, 700, 256), (12, 3, 20, 48, 333, 64), (8, 2, 64, 128, 5, 256)])  # fmt: skip
def test_triton_chunked_scan_matches_the_reference(
    dtype, with_state, h, g, p, n, length, chunk, poisoned_outputs
):
    """Fresh random inputs laid out as the conv output holds them (x, B and C strided views
    of one tensor); a partial last chunk, groups > 1, sizes that are not powers of 2, and a
    starting state that is updated in place."""
    from granite_runtime.kernels.triton.scan import chunked_scan
    from granite_runtime.layers import ssd

    gen = torch.Generator(device="cuda").manual_seed(h * length + n)

    def rand(*shape):
        return torch.randn(*shape, device="cuda", generator=gen)

    xbc = rand(2, length, h * p + 2 * g * n).to(dtype)
    x = xbc[..., : h * p].view(2, length, h, p)
    bm = xbc[..., h * p : h * p + g * n].view(2, length, g, n)
    cm = xbc[..., h * p + g * n :].view(2, length, g, n)
    dt = torch.nn.functional.softplus(rand(2, length, h) - 2)
    a, d = -torch.exp(rand(h) * 0.5), rand(h)
    state = rand(2, h, p, n) if with_state else None
    y_ref, final_ref = ssd.chunked_scan(x, dt, a, bm, cm, d, chunk, state)
    pool = state.clone() if with_state else None
    y, final = chunked_scan(x, dt, a, bm, cm, d, chunk, pool, final=pool)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    assert _rel(y, y_ref) < tol
    assert _rel(final, final_ref) < tol
    if with_state:
        assert final.data_ptr() == pool.data_ptr()  # written where the pool row lies
    else:  # y in the inputs' dtype, as mamba_ssm writes it (bench/ssd_bench.py compares)
        y_low, _ = chunked_scan(x, dt, a, bm, cm, d, chunk, out_dtype=dtype)
        assert y_low.dtype == dtype and _rel(y_low, y_ref) < max(tol, 1e-2)


def _fused_inputs(dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return lambda *shape: torch.randn(*shape, device="cuda", generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_norms_and_gates_match_the_pytorch_ops(dtype, poisoned_outputs):
    """Each fused kernel against the PyTorch ops it replaces (layers/), strided inputs
    as the projections leave them, a width that is not a power of 2, 2 norm groups."""
    import torch.nn.functional as F

    from granite_runtime.kernels.triton import fused as triton_fused
    from granite_runtime.layers.norm import RMSNorm

    rand = _fused_inputs(dtype, 7)
    tol = 1e-6 if dtype == torch.float32 else 8e-3  # bf16: a last-bit rounding here and there
    x, delta = rand(3, 5, 1000), rand(3, 5, 1000)
    norm = RMSNorm(1000, 1e-5).to("cuda", dtype)
    norm.weight.data = rand(1000)
    total, normed = triton_fused.add_rms_norm(x, delta, 0.25, norm.weight, 1e-5)
    ref_total = torch.add(x, delta, alpha=0.25)
    assert _rel(total, ref_total) < tol and _rel(normed, norm(ref_total)) < tol
    proj = rand(7, 2 * 768 + 9)  # [z | y-ish | dt] as in_proj's output lays them out
    z, y = proj[:, :768], proj[:, 768 : 2 * 768].float() * 3
    gated = RMSNorm(768, 1e-6, groups=2).to("cuda", dtype)
    gated.weight.data = rand(768)
    got = triton_fused.gated_rms_norm(y, z, gated.weight, 1e-6, 2)
    assert _rel(got, gated(y, gate=z).to(dtype)) < tol
    gate_up = rand(4, 2, 2 * 1100)
    gate, up = gate_up.chunk(2, dim=-1)
    assert _rel(triton_fused.silu_mul(gate_up), F.silu(gate) * up) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [2, 37])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_conv_prefill_continues_the_window(dtype, length, bias, poisoned_outputs):
    """A chunk after earlier ones: the kernel reads the pool window and leaves it as it was
    (the caller moves it, `Batch.window_after`, tested in test_runtime_packed.py)."""
    import torch.nn.functional as F

    from granite_runtime.kernels.triton import fused as triton_fused

    rand = _fused_inputs(dtype, length)
    channels, k = 300, 4
    xbc = rand(2, length, channels + 11)[..., 5 : 5 + channels]  # strided, as split leaves it
    weight, b = rand(channels, k), rand(channels) if bias else None
    pool = rand(5, channels, k - 1)
    slots = torch.tensor([3, 1], device="cuda")
    full = torch.cat([pool[slots], xbc.transpose(1, 2)], dim=-1)
    expected = F.silu(F.conv1d(full, weight[:, None], b, groups=channels)).transpose(1, 2)
    before = pool.clone()
    got = triton_fused.conv_prefill(xbc, pool, weight, b, slots)
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    assert _rel(got, expected) < tol
    assert torch.equal(pool, before)


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_prompt_in_chunks_matches_the_cpu_reference(tiny_hybrid, dtype, tol):
    """A prompt fed in chunks of 64 after earlier ones (attention causal to the last key,
    the scan starting from the state the last chunk left) gives the one-pass CPU logits."""
    ids = torch.randint(0, 1000, (1, 300), generator=torch.Generator().manual_seed(2))
    expected = _logits(tiny_hybrid, "float32", "cpu", ids)
    model = load_model(tiny_hybrid, dtype, "cuda")
    cache = HybridCache(model.config, 2, 300, model.lm_head.weight.dtype, "cuda")
    parts = []
    with torch.no_grad():
        for start in range(0, 300, 64):
            chunk = ids[:, start : start + 64].cuda()
            parts.append(model(chunk, Batch.make([1], [start], "cuda"), cache, all_logits=True))
    assert _rel(torch.cat(parts, dim=1).cpu(), expected) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c", [768, 1000])
def test_triton_conv_update_matches_the_reference(dtype, c, poisoned_outputs):
    from granite_runtime.kernels.triton.decode import conv_update

    gen = torch.Generator(device="cuda").manual_seed(c)
    b, s, k = 3, 5, 4
    slots = torch.tensor([3, 0, 4], device="cuda")
    x = torch.randn(b, c, device="cuda", generator=gen).to(dtype)
    weight = torch.randn(c, k, device="cuda", generator=gen).to(dtype)
    bias = torch.randn(c, device="cuda", generator=gen).to(dtype)
    pool = torch.randn(s, c, k - 1, device="cuda", generator=gen).to(dtype)
    full = torch.cat([pool[slots].float(), x.float()[:, :, None]], dim=-1)
    expected = torch.nn.functional.silu((full * weight.float()).sum(-1) + bias.float())
    got_pool = pool.clone()
    out = conv_update(x, got_pool, weight, bias, slots)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert _rel(out, expected) < tol
    assert torch.equal(got_pool[slots], full[:, :, 1:].to(dtype))
    untouched = [i for i in range(s) if i not in slots.tolist()]
    assert torch.equal(got_pool[untouched], pool[untouched])


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"
)
@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense"])
def test_two_gpus_compute_what_one_computes(fixture, request):
    """gkit serve --gpus 2's engine: NCCL all-reduces, inside the CUDA graphs too (decode),
    against one GPU; fp32, so the only difference is the order of the sums."""
    from tests.test_runtime_tp import assert_same, one_rank, two_ranks

    path = request.getfixturevalue(fixture)
    assert_same(one_rank(path, "cuda"), two_ranks(path, "cuda"))


def _fp8_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores")
def test_fp8_on_the_gpu_keeps_the_bf16_answer(tiny_hybrid):
    from granite_runtime.layers.fp8 import Fp8Linear

    ids = torch.randint(0, 1000, (1, 64), generator=torch.Generator().manual_seed(4))
    bf16 = _logits(tiny_hybrid, "bfloat16", "cuda", ids)
    q = _logits(tiny_hybrid, "fp8", "cuda", ids)
    assert _rel(q, bf16) < 0.1
    assert (q.argmax(-1) == bf16.argmax(-1)).float().mean() > 0.8
    model = load_model(tiny_hybrid, "fp8", "cuda")
    assert isinstance(model.model.layers[0].mamba.out_proj, Fp8Linear)
    engine = Engine(model, TextCodec.from_dir(tiny_hybrid), max_num_seqs=2, max_model_len=128)
    assert engine.graphs is not None and 1 in engine.graphs.graphs
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    assert len(engine.generate(ids[0, :20].tolist(), params).output_ids) == 16


@pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores")
@pytest.mark.parametrize(("m", "n", "k"), [(1, 2560, 2560), (5, 100, 200), (16, 48, 1000)])
def test_fp8_matvec_matches_the_dequantized_product(m, n, k, poisoned_outputs):
    from granite_runtime.kernels.triton.decode import fp8_matvec

    g = torch.Generator(device="cuda").manual_seed(m * n + k)
    w = torch.randn(n, k, device="cuda", generator=g).to(torch.float8_e4m3fn)
    scale = torch.rand(n, device="cuda", generator=g) + 0.01
    bias = torch.randn(n, device="cuda", generator=g).to(torch.bfloat16)
    x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
    reference = x.float() @ (w.float() * scale[:, None]).T + bias.float()
    ours = fp8_matvec(x, w, scale, bias)
    assert ours.shape == (m, n) and ours.dtype == torch.bfloat16
    assert _rel(ours, reference) < 1e-2


@pytest.mark.parametrize(("heads", "kv_heads", "d"), [(8, 2, 64), (6, 6, 32), (32, 8, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_decode_attention_matches_sdpa(heads, kv_heads, d, dtype, poisoned_outputs):
    """Scattered slots, different lengths (one shorter than a key block, one longer than
    several), keys read where they lie in the pool."""
    import torch.nn.functional as F

    from granite_runtime.kernels.triton.decode import decode_attention

    g = torch.Generator(device="cuda").manual_seed(heads * d)
    k_pool = torch.randn(5, kv_heads, 300, d, device="cuda", generator=g).to(dtype)
    v_pool = torch.randn(5, kv_heads, 300, d, device="cuda", generator=g).to(dtype)
    q = torch.randn(3, heads, d, device="cuda", generator=g).to(dtype)
    slots, starts = [4, 0, 2], [7, 299, 130]
    ours = decode_attention(
        q,
        k_pool,
        v_pool,
        torch.tensor(slots, device="cuda"),
        torch.tensor(starts, device="cuda"),
        0.1,
    )

    def assert_attends_to_the_pool(out):
        for row, (slot, start) in enumerate(zip(slots, starts, strict=True)):
            keys, values = k_pool[slot, :, : start + 1], v_pool[slot, :, : start + 1]
            expected = F.scaled_dot_product_attention(
                q[row, :, None].float(), keys.float(), values.float(), scale=0.1, enable_gqa=True
            )[:, 0]
            assert _rel(out[row], expected) < (1e-2 if dtype == torch.bfloat16 else 1e-5)

    assert_attends_to_the_pool(ours)
    # the same with each row's new key/value handed over (rows of one [q | k | v] tensor,
    # as the fused q/k/v product gives them): written into the pool, then attended to
    qkv = torch.cat([q.flatten(1), torch.randn(3, 2 * kv_heads * d, device="cuda").to(dtype)], 1)
    q2 = qkv[:, : heads * d].view(3, heads, d)
    new_k = qkv[:, heads * d : (heads + kv_heads) * d].view(3, kv_heads, d)
    new_v = qkv[:, (heads + kv_heads) * d :].view(3, kv_heads, d)
    before_k, before_v = k_pool.clone(), v_pool.clone()
    written = decode_attention(
        q2, k_pool, v_pool, torch.tensor(slots, device="cuda"),
        torch.tensor(starts, device="cuda"), 0.1, new_k, new_v,
    )  # fmt: skip
    for pool, before, new in ((k_pool, before_k, new_k), (v_pool, before_v, new_v)):
        for row, (slot, start) in enumerate(zip(slots, starts, strict=True)):
            assert torch.equal(pool[slot, :, start], new[row])
            before[slot, :, start] = new[row]
        assert torch.equal(pool, before)  # nothing else written
    assert_attends_to_the_pool(written)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize(("tokens", "experts", "k", "inner", "hidden"), [
    (1, 64, 6, 512, 1536),  # h-tiny at batch 1
    (10, 64, 6, 512, 1536),  # the most token copies decode sends here (64 // k tokens)
    (3, 8, 3, 40, 100),  # widths that are not multiples of the blocks
])  # fmt: skip
def test_moe_decode_reads_experts_in_place(
    tokens, experts, k, inner, hidden, dtype, tol, poisoned_outputs
):
    """triton_moe against the CPU reference path (MoE._gathered in fp32) on fresh inputs;
    one token repeated must give the same output row twice (no cross-row mixing)."""
    import dataclasses

    from granite_ops_kit import catalog
    from granite_runtime.layers.moe import MoE
    from granite_runtime.spec.config import GraniteConfig

    gen = torch.Generator().manual_seed(tokens * 31 + k)
    x = torch.randn(tokens, hidden, generator=gen)
    x[-1] = x[0]
    w1 = torch.randn(experts, 2 * inner, hidden, generator=gen) / hidden**0.5
    w2 = torch.randn(experts, hidden, inner, generator=gen) / inner**0.5
    logits = torch.randn(tokens, experts, generator=gen)
    logits[-1] = logits[0]
    top, chosen = logits.topk(k, dim=-1)
    weights = torch.softmax(top, dim=-1)
    config = GraniteConfig.from_dict(catalog.load_config("granite-4.0-h-tiny"))
    config = dataclasses.replace(
        config, hidden_size=hidden, num_experts=experts, top_k=k, expert_size=inner
    )
    moe = MoE(config)
    moe.input_linear.weight.data, moe.output_linear.weight.data = w1, w2
    with torch.no_grad():
        ref = moe._gathered(x, chosen, weights)
    from granite_runtime.kernels.triton import moe as triton_moe

    cast = [t.to("cuda", dtype) for t in (x, weights, w1, w2)]
    got = triton_moe.moe_decode(cast[0], chosen.cuda(), cast[1], cast[2], cast[3]).cpu()
    assert got.dtype == dtype and got.shape == (tokens, hidden)
    assert _rel(got, ref) < tol
    assert torch.equal(got[0], got[-1])


@pytest.mark.parametrize(("tokens", "experts", "k", "hidden"), [(1, 64, 6, 1536), (10, 62, 8, 100)])
def test_moe_route_picks_the_reference_experts(tokens, experts, k, hidden, poisoned_outputs):
    """triton_moe.route (the router product, then top-k and softmax in one kernel) against
    PyTorch's linear -> float -> topk -> softmax in fp32: the same experts in the same order,
    weights within 1e-5; in bf16 (logits rounded like the linear's output) weights within 1e-2."""
    from granite_runtime.kernels.triton import moe as triton_moe

    gen = torch.Generator().manual_seed(tokens + experts)
    x = torch.randn(tokens, hidden, generator=gen).cuda()
    router = (torch.randn(experts, hidden, generator=gen) / hidden**0.5).cuda()
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        xs, rs = x.to(dtype), router.to(dtype)
        top, chosen = torch.nn.functional.linear(xs, rs).float().topk(k, dim=-1)
        got_experts, got_weights = triton_moe.route(xs, rs, k)
        assert got_weights.dtype == dtype
        if dtype == torch.float32:  # bf16 logits can tie, and ties may order either way
            assert torch.equal(got_experts, chosen)
        else:
            assert (got_experts == chosen).float().mean() > 0.9
        assert _rel(got_weights.sort(-1).values, torch.softmax(top, -1).sort(-1).values) < tol


@pytest.mark.parametrize(("rows", "out", "inner"), [(1, 2048, 8192), (1, 100, 72), (5, 8512, 2048)])
def test_triton_gemv_matches_cublas(rows, out, inner, poisoned_outputs):
    """Every block shape of triton_gemv against F.linear on the same bf16 inputs; `linear`
    then measures, records its pick for the shape, and returns the same product."""
    from granite_runtime.kernels.triton import gemv as triton_gemv

    gen = torch.Generator(device="cuda").manual_seed(rows * out)
    x = torch.randn(rows, inner, device="cuda", generator=gen).to(torch.bfloat16)
    w = (torch.randn(out, inner, device="cuda", generator=gen) / inner**0.5).to(torch.bfloat16)
    ref = torch.nn.functional.linear(x.float(), w.float())
    for config in triton_gemv.CONFIGS:
        assert _rel(triton_gemv.gemv(x, w, config), ref) < 8e-3, config
    triton_gemv.CHOICE.clear()
    got = triton_gemv.linear(x.view(rows, 1, inner), w)
    assert got.shape == (rows, 1, out) and _rel(got.view(rows, out), ref) < 8e-3
    assert (rows, out, inner, torch.bfloat16, x.device.index) in triton_gemv.CHOICE
    # weights that fit in L2 are never timed (a repeated call reads them hot): cuBLAS
    assert not triton_gemv.applies(x, w, None)
    l2 = torch.cuda.get_device_properties(x.device).L2_cache_size
    big = torch.empty(5 * l2 // 4096, 2048, device="cuda", dtype=torch.bfloat16)
    assert triton_gemv.applies(x[:, :2048], big, None)


def _separate(prologue, a, b, norm_w, eps, w):
    """The PyTorch path of layers/ for each prologue, then the product in fp32."""
    import torch.nn.functional as F

    if prologue == "norm_add":
        total = torch.add(a, b, alpha=0.3) if b is not None else a
        h = norm_w * F.rms_norm(total.float(), (a.shape[-1],), eps=eps).to(a.dtype)
        return total, F.linear(h.float(), w.float())
    if prologue == "gated_norm":  # y fp32, z in the model dtype
        h = norm_w * F.rms_norm(a * F.silu(b.float()), (a.shape[-1],), eps=eps)
        return None, F.linear(h.to(b.dtype).float(), w.float())
    gate, up = a.chunk(2, dim=-1)
    return None, F.linear((F.silu(gate) * up).float(), w.float())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("rows", "inner"), [(8512, 2048), (2048, 8192), (100, 72), (37, 1000)])
def test_fused_linear_builds_its_input_like_the_separate_kernels(
    rows, inner, dtype, poisoned_outputs
):
    """triton_fused_linear's prologues (add + RMSNorm, gated RMSNorm, SiLU * up, none), with
    and without the first block read before the wait, at config_for's block shape and two
    forced ones (1 row a load and 1 program per SM; 2 rows
    and 8 per SM), against the PyTorch path of layers/: products within dtype rounding,
    the new residual bit-equal, the stacked second and third weights' rows after the
    first's (odd row counts, so blocks straddle the seams), the kept normed vector equal to
    PyTorch's."""
    import torch.nn.functional as F

    from granite_runtime.kernels.triton import fused_linear as fl

    gen = torch.Generator(device="cuda").manual_seed(rows + inner)

    def rand(*shape, d=dtype, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(d)

    w, second = rand(rows, inner, scale=inner**-0.5), rand(25, inner, scale=inner**-0.5)
    third = rand(7, inner, scale=inner**-0.5)
    x, delta, nw = rand(1, 1, inner), rand(1, 1, inner), rand(inner, scale=0.5) + 1
    y, z, gate_up = rand(1, 1, inner, d=torch.float32), rand(1, 1, inner), rand(1, 1, 2 * inner)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    total, ref = _separate("norm_add", x, delta, nw, 1e-5, torch.cat([w, second, third]))
    _, gated_ref = _separate("gated_norm", y, z, nw, 1e-5, w)
    _, silu_ref = _separate("silu_mul", gate_up, None, None, 0, w)
    _, first_ref = _separate("norm_add", x, None, nw, 1e-5, w)
    normed_ref = nw * F.rms_norm(total.float(), (inner,), eps=1e-5).to(dtype)
    for config in [None, (1, 1, 4, 2), (2, 8, 8, 4)]:  # (rows, programs/SM, warps, stages)
        forced = LaunchOptions(linear_blocks=config)
        got_total, got, normed = fl.norm_linear(
            x, delta, 0.3, nw, 1e-5, w, second, third, keep_normed=True, launch=forced
        )
        assert torch.equal(got_total, total) and got.shape == (1, 1, rows + 32)
        assert _rel(got, ref) < tol, config
        # the same product with its weight reads after the wait (the benchmark's
        # switch; unforced, its own block shape)
        late_launch = LaunchOptions(preload=False)
        late = fl.norm_linear(x, delta, 0.3, nw, 1e-5, w, second, third, launch=late_launch)
        assert torch.equal(late[0], total) and _rel(late[1], ref) < tol, config
        assert _rel(normed.view(-1), normed_ref.view(-1)) < 1e-2
        same, first = fl.norm_linear(x, None, 0.3, nw, 1e-5, w, launch=forced)
        assert same is x and _rel(first, first_ref) < tol
        assert _rel(fl.gated_norm_linear(y, z, nw, 1e-5, w, launch=forced), gated_ref) < tol
        assert _rel(fl.silu_mul_linear(gate_up, w, launch=forced), silu_ref) < tol
        assert _rel(fl.linear(z, w, launch=forced), F.linear(z.float(), w.float())) < tol


@pytest.mark.parametrize(("tokens", "experts", "k", "inner", "hidden", "shared"), [
    (1, 64, 6, 512, 1536, 1024),  # h-tiny at batch 1
    (3, 10, 3, 40, 100, 24),  # widths that are not multiples of the blocks
    (2, 8, 2, 32, 64, 0),  # no shared MLP
])  # fmt: skip
def test_moe_decode_routed_picks_experts_and_adds_the_shared_mlp(
    tokens, experts, k, inner, hidden, shared, poisoned_outputs
):
    """triton_moe.moe_decode_routed from one product's [logits | gate | up]: the same
    experts and output as route + moe_decode + PyTorch's shared MLP (fp32, 1e-5), and in
    bf16 within rounding of the fp32 result."""
    import torch.nn.functional as F

    from granite_runtime.kernels.triton import moe as triton_moe

    gen = torch.Generator(device="cuda").manual_seed(tokens * experts)
    x = torch.randn(tokens, hidden, device="cuda", generator=gen)
    w1 = torch.randn(experts, 2 * inner, hidden, device="cuda", generator=gen) / hidden**0.5
    w2 = torch.randn(experts, hidden, inner, device="cuda", generator=gen) / inner**0.5
    router = torch.randn(experts, hidden, device="cuda", generator=gen) / hidden**0.5
    s_in = torch.randn(2 * shared, hidden, device="cuda", generator=gen) / hidden**0.5
    s_out = torch.randn(hidden, shared, device="cuda", generator=gen) / max(shared, 1) ** 0.5
    chosen, weights = triton_moe.route(x, router, k)
    ref = triton_moe.moe_decode(x, chosen, weights, w1, w2)
    if shared:
        gate, up = F.linear(x, s_in).chunk(2, dim=-1)
        ref = ref + F.linear(F.silu(gate) * up, s_out)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        c = [t.to(dtype) for t in (x, router, s_in, w1, w2, s_out)]
        logits_gate_up = F.linear(c[0], torch.cat([c[1], c[2]]))
        got = triton_moe.moe_decode_routed(
            c[0], logits_gate_up, experts, k, c[3], c[4], c[5] if shared else None
        )
        assert got.dtype == dtype and got.shape == (tokens, hidden)
        assert _rel(got, ref) < tol, dtype


@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense"])
def test_one_row_decode_runs_the_fused_products(fixture, request, monkeypatch):
    """bf16 decode at batch 1 takes triton_fused_linear (the launches are counted: norms in
    the products, for MoE the router stacked with the shared MLP, for attention without
    RoPE q/k/v stacked and the output product) and gives the logits of the separate kernels
    within bf16 rounding, and of the fp32 CPU reference; the Mamba pools and the KV pool
    (written by the attention kernel itself on the fused path) end up the same."""
    from granite_runtime.kernels.triton import fused_linear as triton_fused_linear

    path = request.getfixturevalue(fixture)
    ids = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(5))
    prologues = []
    launch = triton_fused_linear._launch

    def counted(prologue, *args, **kwargs):
        prologues.append(prologue.value)
        return launch(prologue, *args, **kwargs)

    monkeypatch.setattr(triton_fused_linear, "_launch", counted)

    def decode(model, device, slot=0):
        cache = HybridCache(model.config, 3, 32, model.lm_head.weight.dtype, device)
        steps = []
        with torch.no_grad():
            model(ids[:, :16].to(device), Batch.make([slot], [0], device), cache)
            for pos in range(16, 24):  # the prompt's own next tokens, one at a time
                token = ids[:, pos : pos + 1].to(device)
                logits = model(token, Batch.make([slot], [pos], device), cache)
                steps.append(logits[0, -1].cpu())
        return torch.stack(steps), cache

    cpu, _ = decode(load_model(path, "float32", "cpu"), "cpu")
    model = load_model(path, "bfloat16", "cuda")
    fused_choice = model.kernels
    assert fused_choice.fused_linear
    select.apply(model, dataclasses.replace(fused_choice, fused_linear=False))
    separate, separate_cache = decode(model, "cuda", slot=2)
    assert prologues == []
    select.apply(model, fused_choice)
    fused, fused_cache = decode(model, "cuda", slot=2)
    # Mamba's conv window and state and the new keys/values end up the same, in the row of
    # the slot used, the other slots untouched
    for pool in ("conv", "ssm", "k", "v"):
        got, want = getattr(fused_cache, pool), getattr(separate_cache, pool)
        if want.numel():
            assert want[:, 2].any() and _rel(got[:, 2], want[:, 2]) < 1e-2, pool
            assert not got[:, :2].any(), pool
    fl = triton_fused_linear
    # tiny-hybrid: MoE, attention without RoPE; tiny-dense: dense MLP, attention with RoPE
    kinds = {fl.NORM_ADD.value, fl.GATED_NORM.value, fl.PLAIN.value} if "hybrid" in fixture else {
        fl.NORM_ADD.value, fl.SILU_MUL.value
    }  # fmt: skip
    assert set(prologues) == kinds
    assert _rel(fused, separate) < 1e-2 and _rel(fused, cpu) < 3e-2


def test_moe_grouped_gemms_replay_in_a_cuda_graph_at_any_token_count(tiny_hybrid):
    """Decode batches beyond the gathered path (tokens x top_k > 64) go through
    torch._grouped_mm, with expert counts by scatter (bincount syncs): one captured graph
    replays new routings exactly as the eager block computes them."""
    from tests.test_runtime_moe import make_moe

    # the device machines are Hopper (H100/H200), where torch._grouped_mm runs in bf16
    assert torch.cuda.get_device_capability() >= (9, 0)
    moe = make_moe(tiny_hybrid, torch.bfloat16, experts=16, top_k=4, size=64).cuda()
    select.apply(moe, select.resolve("cuda", torch.bfloat16))
    assert moe.grouped_mm
    config = moe.config
    static = torch.randn(80, config.hidden_size, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        for _ in range(2):
            moe(static)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = moe(static)
        for seed in (1, 2, 3):
            x = torch.randn(80, config.hidden_size, generator=torch.Generator().manual_seed(seed))
            static.copy_(x.to("cuda", torch.bfloat16))
            graph.replay()
            assert torch.equal(out, moe(static))
