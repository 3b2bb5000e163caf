"""A padded prompt chunk (`Batch.padded`: the static shape a chunk graph replays, its tail
filler) computes what the unpadded chunk computes: the same last-token logits, the same
Mamba state and the same keys at the prompt's positions. The filler is random tokens, so a
trace of it anywhere would show."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from granite_runtime.engine import chunk_graphs  # noqa: E402
from granite_runtime.engine.batch import Batch  # noqa: E402
from granite_runtime.engine.cache import HybridCache  # noqa: E402
from granite_runtime.engine.prefill_stream import share_replays, within_room  # noqa: E402
from granite_runtime.engine.sampling import SamplingParams  # noqa: E402
from granite_runtime.engine.sequence import Sequence  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(seed))


def _after_first_chunk(model, slot: int) -> HybridCache:
    cache = HybridCache(model.config, 4, 96, torch.float32, "cpu")
    model(_ids(19, 1), Batch.make([slot], [0], "cpu"), cache)
    return cache


@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense"])
@pytest.mark.parametrize("real", [1, 2, 37])  # fewer real tokens than the conv window, and more
def test_a_padded_chunk_equals_the_unpadded_one(fixture, real, request):
    model = load_model(request.getfixturevalue(fixture), "float32", "cpu")
    chunk, filler = _ids(real, 2), _ids(64 - real, 3)
    with torch.no_grad():
        plain = _after_first_chunk(model, 2)
        want = model(chunk, Batch.make([2], [19], "cpu"), plain)
        padded = _after_first_chunk(model, 2)
        batch = Batch.padded(torch.tensor([2]), torch.tensor([19]), torch.tensor([real]))
        got = model(torch.cat([chunk, filler], dim=1), batch, padded)
    assert got.shape == want.shape == (1, 1, model.config.vocab_size)
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    for name in ("conv", "ssm"):
        assert torch.allclose(getattr(plain, name), getattr(padded, name), atol=1e-5), name
    end = 19 + real  # keys past the prompt hold filler until later tokens overwrite them
    for name in ("k", "v"):
        a, b = getattr(plain, name)[:, :, :, :end], getattr(padded, name)[:, :, :, :end]
        assert torch.allclose(a, b, atol=1e-5), name
    if padded.k.numel():
        assert not torch.equal(plain.k, padded.k)  # the filler did write past the prompt


def test_the_next_conv_window_counts_only_real_tokens():
    past = torch.arange(6.0).view(1, 2, 3)  # (B, C, W): columns 0-2 and 3-5
    x = torch.tensor([[[10.0, 20.0], [11.0, 21.0], [99.0, 99.0]]])  # (B, L, C), 2 real
    plain = Batch.make([0], [0], "cpu")
    assert plain.window_after(past, x[:, :2]).tolist() == [[[2.0, 10.0, 11.0], [5.0, 20.0, 21.0]]]
    padded = Batch.padded(torch.tensor([0]), torch.tensor([0]), torch.tensor([2]))
    assert padded.window_after(past, x).tolist() == [[[2.0, 10.0, 11.0], [5.0, 20.0, 21.0]]]
    one = Batch.padded(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    assert one.window_after(past, x).tolist() == [[[1.0, 2.0, 10.0], [4.0, 5.0, 20.0]]]


def test_the_next_conv_window_of_rows_of_different_lengths_in_a_strided_chunk():
    past = torch.randn(3, 5, 3)  # (B, C, W)
    wide = torch.randn(3, 6, 9)
    x = wide[..., 2:7]  # (B, L, C), strided as the conv input is a view of in_proj's output
    lengths = [6, 2, 1]
    padded = Batch.padded(torch.tensor([0, 1, 2]), torch.zeros(3), torch.tensor(lengths))
    got = padded.window_after(past, x)
    for row, n in enumerate(lengths):
        joined = torch.cat([past[row], x[row, :n].T], dim=-1)  # (C, W + n)
        assert torch.equal(got[row], joined[:, -3:]), row


def test_chunk_lengths_keep_padding_under_a_third_of_a_graph():
    assert chunk_graphs.chunk_lengths(64, 512) == [64, 96, 128, 192, 256, 384, 512]
    assert chunk_graphs.chunk_lengths(64, 300) == [64, 96, 128, 192, 256, 300]
    lengths = chunk_graphs.chunk_lengths(64, 2048)
    padded = {n: min(s for s in lengths if s >= n) for n in range(65, 2049)}
    assert all(s - n < s / 3 for n, s in padded.items())


@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense"])
def test_whole_prompts_in_the_rows_of_one_padded_batch_equal_each_alone(fixture, request):
    """The shape a shared replay runs (chunk_graphs.replay_prompts), here eagerly: three
    prompts of 5, 48 and 31 tokens as rows of 48 in slots 3, 0 and 2, random filler after
    each, give each prompt's logits and state alone, and leave slot 1 untouched."""
    model = load_model(request.getfixturevalue(fixture), "float32", "cpu")
    lengths, slots = [5, 48, 31], [3, 0, 2]
    prompts = [_ids(n, 10 + n) for n in lengths]
    with torch.no_grad():
        alone = HybridCache(model.config, 4, 96, torch.float32, "cpu")
        want = torch.cat(
            [
                model(p, Batch.make([s], [0], "cpu"), alone)[:, -1]
                for p, s in zip(prompts, slots, strict=True)
            ]
        )
        shared = HybridCache(model.config, 4, 96, torch.float32, "cpu")
        if shared.ssm.numel():
            shared.ssm[:, 1] = 7.0
        rows = torch.cat([torch.cat([p, _ids(48 - p.shape[1], 4)], dim=1) for p in prompts])
        batch = Batch.padded(
            torch.tensor(slots), torch.zeros(3, dtype=torch.long), torch.tensor(lengths)
        )
        got = model(rows, batch, shared)[:, -1]
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    for slot, n in zip(slots, lengths, strict=True):
        for name in ("conv", "ssm"):
            a, b = getattr(alone, name)[:, slot], getattr(shared, name)[:, slot]
            assert torch.allclose(a, b, atol=1e-5), (name, slot)
        for name in ("k", "v"):
            a, b = getattr(alone, name)[:, slot, :, :n], getattr(shared, name)[:, slot, :, :n]
            assert torch.allclose(a, b, atol=1e-5), (name, slot)
    if shared.ssm.numel():
        assert torch.all(shared.ssm[:, 1] == 7.0)


def test_row_counts_keep_rows_times_length_within_the_chunk():
    lengths = chunk_graphs.chunk_lengths(64, 2048)
    rows = chunk_graphs.row_counts(lengths, 2048)
    assert rows == {64: 4, 96: 4, 128: 4, 192: 4, 256: 4, 384: 4, 512: 4, 768: 2, 1024: 2}
    assert all(n * r <= 2048 for n, r in rows.items())


def test_prompts_share_replays_by_padded_length_and_the_rest_go_alone():
    """Four rows of 64 for prompts up to 64 tokens, two of 128 up to 128, none above: a
    group fills in arrival order and is queued once full, a long prompt never waits for
    one, and what is left of a group at the end goes one prompt a replay."""
    shared = {64: (64, 4), 128: (128, 2)}

    def rows_for(n: int):
        return next((v for size, v in sorted(shared.items()) if n <= size), None)

    params = SamplingParams(max_tokens=1)
    lengths = [10, 64, 100, 300, 33, 64, 128, 50, 20]
    seqs = [Sequence(list(range(1, n + 1)), params) for n in lengths]
    groups = share_replays(seqs, rows_for)
    assert [[len(s.prompt_ids) for s in g] for g in groups] == [
        [300],  # no shared graph: queued as it comes
        [10, 64, 33, 64],  # full at its fourth prompt
        [100, 128],
        [50],  # what is left of the group of 64
        [20],
    ]
    assert sorted(id(s) for g in groups for s in g) == sorted(id(s) for s in seqs)


def test_prompts_are_queued_in_order_while_the_prefill_stream_has_room():
    """Room for 1,000 prompt tokens: prompts go in order until as many are queued; the one
    that crosses the limit still goes (else a prompt longer than the room would never run),
    and none after it."""
    params = SamplingParams(max_tokens=1)
    seqs = [Sequence([1] * n, params) for n in (300, 500, 400, 10)]
    assert [len(s.prompt_ids) for s in within_room(seqs, 0, 1000)] == [300, 500, 400]
    assert [len(s.prompt_ids) for s in within_room(seqs, 900, 1000)] == [300]
    assert within_room(seqs, 1000, 1000) == []
    alone = [Sequence([1] * 4000, params)]
    assert within_room(alone, 0, 1000) == alone
