"""The static decode step (what CUDA graphs replay) computes what the eager step computes;
checked on the CPU so CI covers it (tests/test_runtime_gpu.py replays it in graphs)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from granite_runtime.engine.batch import Batch  # noqa: E402
from granite_runtime.engine.cache import HybridCache  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402


@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense"])
def test_static_decode_matches_eager_for_scattered_slots(fixture, request):
    path = request.getfixturevalue(fixture)
    model = load_model(path, "float32", "cpu")
    results = []
    for static in (False, True):
        cache = HybridCache(model.config, 5, 48, torch.float32, "cpu")
        slots, starts, tokens = [4, 1, 2], [], []
        with torch.no_grad():
            for slot, n in zip(slots, (11, 23, 5), strict=True):
                ids = torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(n))
                logits = model(ids, Batch.make([slot], [0], "cpu"), cache)
                starts.append(n)
                tokens.append(int(logits[0, -1].argmax()))
            steps = []
            for _ in range(4):
                t = torch.tensor([[x] for x in tokens])
                batch = (
                    Batch.graphable(torch.tensor(slots), torch.tensor(starts))
                    if static
                    else Batch.make(slots, starts, "cpu")
                )
                logits = model(t, batch, cache)
                steps.append(logits[:, -1])
                tokens = logits[:, -1].argmax(-1).tolist()
                starts = [s + 1 for s in starts]
        results.append((torch.stack(steps), cache.ssm.clone(), cache.k.clone()))
    (eager, ssm_e, k_e), (static, ssm_s, k_s) = results
    assert ((static - eager).norm() / eager.norm()).item() < 1e-5
    assert torch.allclose(ssm_s, ssm_e, atol=1e-6) and torch.allclose(k_s, k_e, atol=1e-6)
