"""Chunk graphs (engine/chunk_graphs.py) on a CUDA GPU: a prompt fed through padded graphs
gives the eager chunks' logits and leaves the same state, a chunk too close to the end of
the KV row runs eagerly, and the engine generates the same tokens with them as without."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from granite_runtime.engine import chunk_graphs  # noqa: E402
from granite_runtime.engine.batch import Batch  # noqa: E402
from granite_runtime.engine.cache import HybridCache  # noqa: E402
from granite_runtime.engine.engine import Engine  # noqa: E402
from granite_runtime.engine.sampling import SamplingParams  # noqa: E402
from granite_runtime.engine.tokenizer import TextCodec  # noqa: E402
from granite_runtime.kernels import select  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402

pytestmark = pytest.mark.gpu

# The hybrid preset is MoE, graph-safe through the grouped GEMMs, which run in bf16 only.
CASES = [
    ("tiny_hybrid", "bfloat16", 2e-2),
    ("hybrid_without_experts", "float32", 1e-5),
    ("tiny_dense", "float32", 1e-5),
]


@pytest.fixture(scope="module")
def hybrid_without_experts(tmp_path_factory):
    from granite_ops_kit.demo.checkpoint import write_demo_model

    dest = tmp_path_factory.mktemp("models") / "hybrid-without-experts"
    return write_demo_model(dest, "tiny-hybrid", overrides={"num_local_experts": 0}).path


def _load(path, dtype: str, block_attention: bool):
    """The model, its chunk graphs attending as query blocks (kernels/triton/
    chunk_attention.py) or as one-token rows through the decode kernel."""
    model = load_model(path, dtype, "cuda")
    select.apply(model, dataclasses.replace(model.kernels, chunk_attention=block_attention))
    return model


def test_block_attention_equals_causal_attention_at_h_micros_shape():
    """kernels/triton/chunk_attention.py in bf16 on the GPU: 32 query heads over 8 KV heads
    of 64, a 2,048-token chunk from 0 and a 1,000-token one from 3,000, against SDPA."""
    from granite_runtime.kernels.triton.chunk_attention import chunk_attention
    from tests.test_runtime_triton_interpreted import _reference

    gen = torch.Generator().manual_seed(7)
    k_pool, v_pool = (torch.randn(2, 8, 4096, 64, generator=gen).bfloat16() for _ in range(2))
    for length, slot, start in [(2048, 1, 0), (1000, 0, 3000)]:
        q = torch.randn(1, 32, length, 64, generator=gen).bfloat16().transpose(1, 2)
        slots, starts = torch.tensor([slot]), torch.tensor([start])
        got = chunk_attention(
            q.cuda(), k_pool.cuda(), v_pool.cuda(), slots.cuda(), starts.cuda(), 0.125
        )
        want = _reference(q.float(), k_pool.float(), v_pool.float(), slots, starts, 0.125)
        assert _rel(got.cpu(), want) < 1e-2, (length, start)


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("block_attention", [False, True])
@pytest.mark.parametrize(("fixture", "dtype", "tol"), CASES)
def test_a_prompt_through_chunk_graphs_equals_eager_chunks(
    fixture, dtype, tol, block_attention, request
):
    model = _load(request.getfixturevalue(fixture), dtype, block_attention)
    ids = torch.randint(0, 1000, (1, 185), generator=torch.Generator().manual_seed(3)).cuda()
    pieces = [(0, 40), (40, 120), (120, 168), (168, 185)]  # graphs 64, 96, 64, then eager
    runs = []
    for graphed in (False, True):
        cache = HybridCache(model.config, 4, 192, model.lm_head.weight.dtype, "cuda")
        graphs = chunk_graphs.GraphedChunks(model, cache)
        if graphed:
            assert chunk_graphs.can_graph(model, cache)
            graphs.capture([64, 96])
            assert graphs.size_for(0, 40) == 64 and graphs.size_for(40, 65) == 96
            assert graphs.size_for(100, 97) is None and graphs.size_for(150, 20) is None
        cache.reset(2)
        if cache.ssm.numel():
            cache.ssm[:, 1] = 7.0  # a slot no chunk uses: must stay as it is
        logits = []
        with torch.no_grad():
            for begin, end in pieces:
                chunk = ids[:, begin:end]
                out = graphs(chunk, 2, begin) if graphed else None
                if out is None:  # eager: the reference, and the graphs' last chunk (too late)
                    out = model(chunk, Batch.make([2], [begin], "cuda"), cache)
                logits.append(out[:, -1].float().cpu().clone())
        runs.append((torch.cat(logits), cache))
    (eager, eager_cache), (graphed, graphed_cache) = runs
    assert _rel(graphed, eager) < tol
    if dtype == "float32":  # in bf16 a random model's top logits lie within rounding
        assert (graphed.argmax(-1) == eager.argmax(-1)).all()
    for name in ("ssm", "conv"):
        a, b = getattr(graphed_cache, name), getattr(eager_cache, name)
        if a.numel():
            assert _rel(a[:, 2], b[:, 2]) < tol, name
    if graphed_cache.ssm.numel():
        assert torch.all(graphed_cache.ssm[:, 1] == 7.0)
    if graphed_cache.k.numel():
        assert _rel(graphed_cache.k[:, 2, :, :185], eager_cache.k[:, 2, :, :185]) < tol


@pytest.mark.parametrize("block_attention", [False, True])
@pytest.mark.parametrize(("fixture", "dtype", "tol"), CASES)
def test_whole_prompts_sharing_a_replay_equal_each_alone(
    fixture, dtype, tol, block_attention, request
):
    """Prompts of 40, 64 and 51 tokens in slots 3, 1 and 2 through one three-row graph of
    64 give each prompt's logits and state through one-row graphs, and leave slot 0 as it
    was. The rows' real lengths differ, so each row's padding must leave no trace."""
    model = _load(request.getfixturevalue(fixture), dtype, block_attention)
    gen = torch.Generator().manual_seed(5)
    lengths, slots = [40, 64, 51], [3, 1, 2]
    prompts = [torch.randint(0, 1000, (n,), generator=gen).cuda() for n in lengths]
    runs = []
    for together in (False, True):
        cache = HybridCache(model.config, 4, 192, model.lm_head.weight.dtype, "cuda")
        graphs = chunk_graphs.GraphedChunks(model, cache)
        with torch.no_grad():
            if together:
                graphs.capture([64, 96], chunk_graphs.row_counts([64, 96], 192))
                assert graphs.rows_for(40) == (64, 3) and graphs.rows_for(90) == (96, 2)
                assert graphs.rows_for(97) is None
            else:
                graphs.capture([64])
            if cache.ssm.numel():
                cache.ssm[:, 0] = 7.0  # a slot no prompt uses: must stay as it is
            if together:
                tokens = torch.zeros(3, 64, dtype=torch.long, device="cuda")
                for row, p in enumerate(prompts):
                    tokens[row, : len(p)] = p
                as_tensors = (torch.tensor(v, device="cuda") for v in (lengths, slots))
                logits = graphs.replay_prompts(tokens, *as_tensors)[:, -1].float().cpu()
            else:
                each = zip(prompts, slots, strict=True)
                logits = torch.cat([graphs(p[None], s, 0)[:, -1].float().cpu() for p, s in each])
        runs.append((logits, cache))
    (alone, alone_cache), (shared, shared_cache) = runs
    assert _rel(shared, alone) < tol
    if dtype == "float32":
        assert (shared.argmax(-1) == alone.argmax(-1)).all()
    for slot, n in zip(slots, lengths, strict=True):
        for name in ("ssm", "conv"):
            a, b = getattr(shared_cache, name), getattr(alone_cache, name)
            if a.numel():
                assert _rel(a[:, slot], b[:, slot]) < tol, (name, slot)
        if shared_cache.k.numel():
            assert _rel(shared_cache.k[:, slot, :, :n], alone_cache.k[:, slot, :, :n]) < tol
    if shared_cache.ssm.numel():
        assert torch.all(shared_cache.ssm[:, 0] == 7.0)


def _engine(path, codec, how: str, **sizes) -> Engine:
    """An engine whose prompts run beside the decode steps (a prefill stream), inside them
    through chunk graphs, or inside them eagerly."""
    engine = Engine(
        load_model(path, "float32", "cuda"), codec, prefill_beside_decode=how == "beside",
        **sizes,
    )  # fmt: skip
    assert (engine.prefill is not None) == (how == "beside")
    if how == "eager":
        engine.chunk_graphs = None
    return engine


@pytest.mark.parametrize("fixture", ["hybrid_without_experts", "tiny_dense"])
def test_the_engine_generates_the_same_with_chunk_graphs(fixture, request):
    """Three prompts of several chunks at once, mixed with decode steps: greedy tokens as
    with no chunk graphs (the same engine settings, chunk graphs switched off; fp32, where
    the packed forward's other GEMM shapes cannot flip a greedy choice), and the same again
    with the prompts on a stream of their own beside the decode steps."""
    path = request.getfixturevalue(fixture)
    codec = TextCodec.from_dir(path)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    prompts = [list(range(5 + i, 5 + i + n)) for i, n in enumerate((150, 70, 201))]
    outputs = []
    for how in ("beside", "inside", "eager"):
        engine = _engine(
            path, codec, how, max_num_seqs=3, max_model_len=256, prefill_chunk=128,
            max_num_batched_tokens=128,
        )  # fmt: skip
        if how == "inside":
            assert sorted(engine.chunk_graphs.graphs) == [64, 96, 128]
        seqs = [engine.submit(p, params) for p in prompts]
        while engine.has_work():
            engine.step()
        outputs.append([s.output_ids for s in seqs])
    assert outputs[0] == outputs[1] == outputs[2]
    assert all(len(o) == 10 for o in outputs[0])


def test_prompts_beside_running_streams_and_a_cancel_in_flight(hybrid_without_experts):
    """Prompts arrive while a stream decodes and one is cancelled while its prefill is in
    flight on the prefill stream: it ends cancelled once it lands, its slot comes back, and
    every other sequence generates what it does with prompts inside the steps."""
    codec = TextCodec.from_dir(hybrid_without_experts)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    outputs = []
    for how in ("beside", "inside"):
        engine = _engine(
            hybrid_without_experts, codec, how, max_num_seqs=4, max_model_len=512,
            prefill_chunk=128,
        )  # fmt: skip
        first = engine.submit([5, 6, 7, 8], params)
        for _ in range(3):
            engine.step()
        assert len(first.output_ids) >= 2  # decoding when the others arrive
        later = [
            engine.submit(list(range(9 + i, 9 + i + n)), params) for i, n in enumerate((300, 200))
        ]
        gone = engine.submit(list(range(40, 290)), params)
        engine.step()
        if how == "beside":
            assert engine.prefill.holds(gone)  # queued on the prefill stream, not landed
        gone.cancel()
        while engine.has_work():
            engine.step()
        assert gone.finish_reason == "cancelled" and gone.output_ids == []
        assert engine.running == [] and len(engine.free_slots) == 4
        outputs.append([s.output_ids for s in (first, *later)])
    assert outputs[0] == outputs[1]
    assert all(len(o) == 40 for o in outputs[0])


def test_short_prompts_arriving_together_share_replays_beside(hybrid_without_experts):
    """Six short prompts at once, beside the decode steps: they share the two-row graph of
    64, three replays of two prompts each, and every sequence generates what it does with
    prompts inside the steps."""
    codec = TextCodec.from_dir(hybrid_without_experts)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = [list(range(7 + i, 7 + i + n)) for i, n in enumerate((20, 64, 33, 50, 41, 60))]
    outputs = []
    for how in ("beside", "inside"):
        engine = _engine(
            hybrid_without_experts, codec, how, max_num_seqs=6, max_model_len=256,
            prefill_chunk=128,
        )  # fmt: skip
        seqs = [engine.submit(p, params) for p in prompts]
        engine.step()
        if how == "beside":
            assert sorted(engine.chunk_graphs.batched) == [64]
            assert [len(group) for group, _, _ in engine.prefill.in_flight] == [2, 2, 2]
        while engine.has_work():
            engine.step()
        outputs.append([s.output_ids for s in seqs])
    assert outputs[0] == outputs[1]
    assert all(len(o) == 12 for o in outputs[0])


@pytest.mark.parametrize(
    "knob",
    ["GKIT_PREFILL_FREE_SMS=16", "GKIT_PREFILL_GREEN_SMS=half", "GKIT_PREFILL_QUEUED_CHUNKS=1"],
)
def test_prompts_beside_on_a_share_of_the_gpu_generate_the_same(
    knob, hybrid_without_experts, monkeypatch
):
    """Each way of sharing the GPU with the decode steps (engine/prefill_share.py): prompts
    of several chunks arriving while a stream decodes generate what they do with prompts
    inside the steps, and the carve-out does not outlive the chunk graphs' capture."""
    name, value = knob.split("=")
    codec = TextCodec.from_dir(hybrid_without_experts)
    if value == "half":
        from torch.cuda import green_contexts

        from granite_runtime.spec.errors import SettingError

        value = str(torch.cuda.get_device_properties().multi_processor_count // 2)
        if not green_contexts.SUPPORTED:  # the knob is then refused at start-up, by name
            monkeypatch.setenv(name, value)
            with pytest.raises(SettingError, match="GKIT_PREFILL_GREEN_SMS is set, but"):
                _engine(hybrid_without_experts, codec, "beside", max_num_seqs=4,
                        max_model_len=512, prefill_chunk=128)  # fmt: skip
            return
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = [[5, 6, 7], list(range(9, 309)), list(range(20, 220))]
    outputs = []
    for how in ("beside", "inside"):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            engine = _engine(
                hybrid_without_experts, codec, how, max_num_seqs=4, max_model_len=512,
                prefill_chunk=128,
            )  # fmt: skip
        assert torch._C._get_sm_carveout_experimental() is None
        if how == "beside" and name == "GKIT_PREFILL_GREEN_SMS":
            assert engine.prefill._context is not None
        if how == "beside" and name == "GKIT_PREFILL_QUEUED_CHUNKS":
            assert engine.prefill.limit == 128
        first = engine.submit(prompts[0], params)
        for _ in range(3):
            engine.step()
        later = [engine.submit(p, params) for p in prompts[1:]]
        while engine.has_work():
            engine.step()
        outputs.append([s.output_ids for s in (first, *later)])
    assert outputs[0] == outputs[1]
    assert all(len(o) == 24 for o in outputs[0])
