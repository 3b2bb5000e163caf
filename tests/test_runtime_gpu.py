"""The runtime on a CUDA GPU against its own CPU reference path (run on the device machine)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from granite_runtime.cache import Batch, HybridCache  # noqa: E402
from granite_runtime.engine import Engine  # noqa: E402
from granite_runtime.loader import load_model  # noqa: E402
from granite_runtime.sampling import SamplingParams  # noqa: E402
from granite_runtime.tokenizer import TextCodec  # noqa: E402

pytestmark = pytest.mark.gpu


def _logits(path, dtype, device, ids):
    model = load_model(path, dtype, device)
    cache = HybridCache(model.config, 1, ids.shape[1], model.lm_head.weight.dtype, device)
    with torch.no_grad():
        return model(ids.to(device), Batch.make([0], [0], device), cache, all_logits=True).cpu()


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


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
