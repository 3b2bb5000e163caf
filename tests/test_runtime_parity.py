"""The runtime computes what transformers computes (the numerical reference), in fp32.

Relative error is ||ours - reference|| / ||reference|| over all logits of a 100-token prompt.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM  # noqa: E402

from granite_ops_kit.demo.checkpoint import write_demo_model  # noqa: E402
from granite_runtime.engine.batch import Batch  # noqa: E402
from granite_runtime.engine.cache import HybridCache  # noqa: E402
from granite_runtime.engine.engine import Engine  # noqa: E402
from granite_runtime.engine.sampling import SamplingParams  # noqa: E402
from granite_runtime.engine.tokenizer import TextCodec  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402

TOLERANCE = 1e-4
GREEDY = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True, logprobs=0)


@pytest.fixture(scope="module")
def moe_groups(tmp_path_factory):
    """MoE with three attention layers and two Mamba groups: shapes no preset has."""
    pattern = ["attention", "mamba", "mamba", "attention", "mamba", "attention"]
    return write_demo_model(
        tmp_path_factory.mktemp("m") / "moe-groups",
        "tiny-hybrid",
        overrides={
            "mamba_n_groups": 2,
            "layer_types": pattern,
            "num_hidden_layers": len(pattern),
            "num_key_value_heads": 1,
        },
    ).path


@pytest.fixture(scope="module")
def saved_by_transformers(tmp_path_factory):
    """A checkpoint that transformers initialised and wrote itself (its own spellings)."""
    config = GraniteMoeHybridConfig(
        vocab_size=512,
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=48,
        shared_intermediate_size=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        mamba_n_heads=6,
        mamba_d_head=32,
        mamba_d_state=16,
        mamba_chunk_size=16,
        mamba_n_groups=2,
        attention_multiplier=1 / 16,
        embedding_multiplier=6.0,
        residual_multiplier=0.5,
        logits_scaling=2.0,
        layer_types=["mamba", "attention", "mamba", "mamba"],
        tie_word_embeddings=True,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    model = GraniteMoeHybridForCausalLM(config)
    path = tmp_path_factory.mktemp("m") / "saved"
    model.save_pretrained(path)
    return path


def _prompt(vocab: int, n: int = 100, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def _reference(path):
    return GraniteMoeHybridForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _full_logits(model, ids):
    cache = HybridCache(model.config, 1, ids.shape[1] + 1, torch.float32, "cpu")
    return model(ids, Batch.make([0], [0], "cpu"), cache, all_logits=True)


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


MODELS = ["tiny_hybrid", "tiny_dense", "moe_groups", "saved_by_transformers"]


@pytest.mark.parametrize("fixture", MODELS)
def test_fp32_logits_match_transformers(fixture, request):
    path = request.getfixturevalue(fixture)
    ours, ref = load_model(path, "float32"), _reference(path)
    ids = _prompt(ours.config.vocab_size)
    with torch.no_grad():
        expected = ref(ids).logits
        got = _full_logits(ours, ids)
    assert got.shape == expected.shape
    assert _rel(got, expected) < TOLERANCE
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("fixture", MODELS)
def test_prefill_then_one_token_at_a_time_equals_full_forward(fixture, request):
    model = load_model(request.getfixturevalue(fixture), "float32")
    ids = _prompt(model.config.vocab_size, seed=1)
    full = _full_logits(model, ids)
    cache = HybridCache(model.config, 2, 128, torch.float32, "cpu")
    with torch.no_grad():
        parts = [model(ids[:, :37], Batch.make([1], [0], "cpu"), cache, all_logits=True)]
        for t in range(37, ids.shape[1]):
            parts.append(
                model(ids[:, t : t + 1], Batch.make([1], [t], "cpu"), cache, all_logits=True)
            )
    stepped = torch.cat(parts, dim=1)
    for position in range(ids.shape[1]):
        assert _rel(stepped[0, position], full[0, position]) < TOLERANCE, position


@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense", "moe_groups"])
def test_greedy_64_tokens_identical_to_transformers(fixture, request):
    path = request.getfixturevalue(fixture)
    model, codec = load_model(path, "float32"), TextCodec.from_dir(path)
    ids = _prompt(model.config.vocab_size, n=20, seed=2)
    engine = Engine(model, codec, max_num_seqs=1, max_model_len=128, prefill_chunk=8)
    ours = engine.generate(ids[0].tolist(), GREEDY).output_ids
    with torch.no_grad():
        theirs = (
            _reference(path)
            .generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)[0, 20:]
            .tolist()
        )
    assert len(ours) == 64
    assert ours == theirs
    assert len(set(ours)) > 4  # the test model's greedy output varies


def test_batch_of_different_lengths_equals_each_alone(tiny_hybrid):
    model, codec = load_model(tiny_hybrid, "float32"), TextCodec.from_dir(tiny_hybrid)
    prompts = [_prompt(1024, n, seed=n)[0].tolist() for n in (5, 41, 77, 100)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=0)
    engine = Engine(model, codec, max_num_seqs=4, max_model_len=160, prefill_chunk=32)
    alone = [engine.generate(p, params) for p in prompts]
    together = [engine.submit(p, params) for p in prompts]
    steps = 0
    while engine.has_work():
        engine.step()
        steps += 1
    assert steps < sum(len(p) // 32 + 25 for p in prompts)  # they really shared steps
    for a, b in zip(alone, together, strict=True):
        assert a.output_ids == b.output_ids
        diffs = [abs(x[0] - y[0]) for x, y in zip(a.logprobs, b.logprobs, strict=True)]
        assert max(diffs) < 1e-4


def test_decode_tokens_count_against_the_step_budget_and_prompts_share_the_rest(tiny_hybrid):
    """max_num_batched_tokens: two streams decode while two prompts wait; each step
    prefills budget - 2 prompt tokens, across both prompts once the first is done, and the
    answers stay those each prompt gets alone."""
    model, codec = load_model(tiny_hybrid, "float32", "cpu"), TextCodec.from_dir(tiny_hybrid)
    engine = Engine(model, codec, max_num_seqs=4, max_model_len=512, prefill_chunk=256,
                    max_num_batched_tokens=130)  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    streams = [engine.submit([5, 6, 7], params), engine.submit([8, 9], params)]
    engine.step()  # both short prompts prefilled; both decoding from now on
    assert all(s.output_ids for s in streams)
    long_ids, short_ids = list(range(3, 203)), list(range(11, 61))
    long, short = engine.submit(long_ids, params), engine.submit(short_ids, params)
    engine.step()
    # 130 minus the 2 decode tokens is 128: two chunks' worth of 64 (non-final chunks are
    # multiples of 64, so kernels meet few lengths)
    assert (long.prefilled, short.prefilled) == (128, 0)
    engine.step()
    assert (long.prefilled, short.prefilled) == (200, 50)  # its last 72, then 50 of 56 left
    while engine.has_work():
        engine.step()
    alone = Engine(model, codec, max_num_seqs=1, max_model_len=512)
    assert long.output_ids == alone.generate(long_ids, params).output_ids
    assert short.output_ids == alone.generate(short_ids, params).output_ids


def test_a_step_gives_its_budget_to_one_prompt_in_a_multiple_of_64(tiny_hybrid):
    """Each chunk is a part of the packed step, and an eager part costs the same host time
    whatever its length: 449 - 1 decoding stream = 448 tokens go to the first prompt as one
    chunk (not 256 + 128 + 64 over three prompts), and the 0 left start no other."""
    model, codec = load_model(tiny_hybrid, "float32", "cpu"), TextCodec.from_dir(tiny_hybrid)
    engine = Engine(model, codec, max_num_seqs=4, max_model_len=1024, prefill_chunk=512,
                    max_num_batched_tokens=449)  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    stream = engine.submit([5, 6, 7], params)
    engine.step()
    prompts = [engine.submit(list(range(3, 603)), params) for _ in range(2)]
    engine.step()
    assert [p.prefilled for p in prompts] == [448, 0] and len(stream.output_ids) == 2
    engine.step()  # the first's last 152, then 296 of the budget: 256 of the second
    assert [p.prefilled for p in prompts] == [600, 256]


def test_incremental_detokenizing_gives_the_whole_decode(tiny_hybrid):
    """The engine decodes only the tokens after a settled point; sampled output (characters
    cut across tokens included) must read exactly as decoding all of it at once."""
    model, codec = load_model(tiny_hybrid, "float32", "cpu"), TextCodec.from_dir(tiny_hybrid)
    assert codec.concatenates  # the demo tokenizer is byte-level BPE, as Granite's
    engine = Engine(model, codec, max_num_seqs=2, max_model_len=512)
    for seed in (1, 2, 3):
        params = SamplingParams(temperature=1.5, max_tokens=200, ignore_eos=True, seed=seed)
        seq = engine.generate([5, 6, 7], params)
        assert seq.settled_ids > 100  # it really settled as it went
        assert seq.text == codec.decode(seq.output_ids)
