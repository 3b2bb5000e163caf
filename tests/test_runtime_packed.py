"""A packed step (engine/batch.py: decode rows and several prompts' chunks on one token axis,
one forward) computes what separate forwards compute: the same logits and the same state
left in the pools, for hybrid and dense models, on scattered slots."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from granite_runtime.engine.batch import Batch  # noqa: E402
from granite_runtime.engine.cache import HybridCache  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(seed))


def _primed(model) -> tuple[HybridCache, list[int]]:
    """A pool whose slots 4 and 1 hold two decoding sequences (prompts of 11 and 23),
    and whose slot 2 holds the first 16 tokens of a prompt still being prefilled."""
    cache = HybridCache(model.config, 6, 64, torch.float32, "cpu")
    for slot, n in ((4, 11), (1, 23), (2, 16)):
        model(_ids(n, n), Batch.make([slot], [0], "cpu"), cache)
    return cache, [7, 9]


@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense"])
def test_a_packed_step_equals_its_parts_run_apart(fixture, request):
    model = load_model(request.getfixturevalue(fixture), "float32", "cpu")
    decode_slots, decode_starts = [4, 1], [11, 23]
    rest_of_2, new_in_0 = _ids(32, 5)[:, 16:], _ids(13, 6)
    with torch.no_grad():
        apart, tokens = _primed(model)
        decode = torch.tensor([[t] for t in tokens])
        want = [
            model(decode, Batch.make(decode_slots, decode_starts, "cpu"), apart),
            model(rest_of_2, Batch.make([2], [16], "cpu"), apart),
            model(new_in_0, Batch.make([0], [0], "cpu"), apart),
        ]
        packed, tokens = _primed(model)
        batch = Batch.packed([4, 1, 2, 0], [11, 23, 16, 0], [1, 1, 16, 13], "cpu")
        axis = torch.cat([torch.tensor([tokens]), rest_of_2, new_in_0], dim=1)
        got = model(axis, batch, packed)
    want = torch.cat([w[:, -1] for w in want])
    assert got.shape == (4, 1, model.config.vocab_size)
    assert ((got[:, -1] - want).norm() / want.norm()).item() < 1e-5
    for name in ("conv", "ssm", "k", "v"):
        a, b = getattr(apart, name), getattr(packed, name)
        assert torch.allclose(a, b, atol=1e-5), name
    assert packed.ssm[:, 3].abs().sum() == 0  # a slot no part holds is untouched


def test_a_packed_batch_groups_one_token_rows_and_lists_each_rows_last_token():
    batch = Batch.packed([4, 1, 2, 0, 3, 5], [11, 23, 16, 0, 7, 9], [1, 1, 16, 13, 1, 1], "cpu")
    assert batch.last.tolist() == [0, 1, 17, 30, 31, 32]
    assert [(p.begin, p.rows, p.length) for p in batch.parts] == [
        (0, 2, 1), (2, 1, 16), (18, 1, 13), (31, 2, 1),
    ]  # fmt: skip
    assert batch.parts[3].batch.slots_list == [3, 5] and batch.parts[3].batch.starts_list == [7, 9]
