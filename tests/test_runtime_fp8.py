"""FP8 weights (fp8.py): the quantized layers against their bf16 originals, and the loader's
refusal where there are no FP8 tensor cores. torch's CPU build has `_scaled_mm` too, so the
numerics are checked here; speed and the GPU path run on the device (test_runtime_gpu.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from granite_runtime.engine.batch import Batch  # noqa: E402
from granite_runtime.engine.cache import HybridCache  # noqa: E402
from granite_runtime.layers import fp8  # noqa: E402
from granite_runtime.layers.linear import Weight  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402
from granite_runtime.spec.errors import ModelLoadError  # noqa: E402


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_fp8_linear_is_close_to_bf16_and_stores_one_byte_per_weight():
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(256, 96, bias=True).to(torch.bfloat16)
    with torch.no_grad():
        # rows of very different magnitudes: a per-tensor scale would flush the small ones
        linear.weight.copy_(torch.randn(96, 256, generator=g) * torch.logspace(-3, 0, 96)[:, None])
        x = torch.randn(5, 1, 256, generator=g).to(torch.bfloat16)
        layer = fp8.Fp8Linear(linear)
        ours, reference = layer(x), linear(x)
    assert layer.weight_fp8.dtype == torch.float8_e4m3fn and layer.weight_fp8.element_size() == 1
    assert ours.shape == (5, 1, 96) and ours.dtype == torch.bfloat16
    assert _rel(ours, reference) < 0.05
    small = slice(0, 10)  # the smallest rows keep their relative accuracy too
    assert _rel(ours[..., small], reference[..., small]) < 0.05


def test_fp8_expert_rows_dequantize_close_to_the_original():
    w = torch.randn(4, 32, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    stack = fp8.Fp8Weight(w)
    index = torch.tensor([3, 0, 3])
    assert _rel(stack.rows(index), w[index]) < 0.05
    assert _rel(stack.rows(2), w[2]) < 0.05


def test_quantized_model_keeps_the_bf16_answer(tiny_hybrid):
    """tiny-hybrid (MoE, Mamba, attention) with every eligible weight in fp8: logits within
    fp8's rounding of bf16's, the same greedy choice on most positions."""
    ids = torch.randint(0, 1000, (1, 48), generator=torch.Generator().manual_seed(2))
    out = []
    for quantize in (False, True):
        model = load_model(tiny_hybrid, "bfloat16", "cpu")
        if quantize:
            swapped = fp8.quantize_linears(model)
            assert swapped > 0
            assert not any(isinstance(m, Weight) for m in model.modules())  # experts too
            assert isinstance(model.lm_head, torch.nn.Linear)  # kept in bf16 on purpose
        cache = HybridCache(model.config, 1, 64, torch.bfloat16, "cpu")
        with torch.no_grad():
            out.append(model(ids, Batch.make([0], [0], "cpu"), cache, all_logits=True))
    bf16, q = out
    assert _rel(q, bf16) < 0.1, _rel(q, bf16)
    assert (q.argmax(-1) == bf16.argmax(-1)).float().mean() > 0.8


def test_fp8_without_fp8_tensor_cores_is_refused_in_one_sentence(tiny_hybrid):
    with pytest.raises(ModelLoadError, match="needs an NVIDIA GPU with FP8 tensor cores"):
        load_model(tiny_hybrid, "fp8", "cpu")
