"""The MoE block's grouped-GEMM path against its per-expert loop (both in layers.MoE)."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from granite_runtime import layers  # noqa: E402
from granite_runtime.config import GraniteConfig  # noqa: E402


def make_moe(tiny_hybrid, dtype, experts: int = 8, top_k: int = 3, size: int = 48) -> layers.MoE:
    """An MoE block of the demo model's width with random weights (`.config` kept)."""
    config = GraniteConfig.from_file(tiny_hybrid / "config.json")
    config = dataclasses.replace(config, num_experts=experts, top_k=top_k, expert_size=size)
    moe = layers.MoE(config)
    moe.config = config
    gen = torch.Generator().manual_seed(0)
    for p in moe.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.1
    return moe.to(dtype)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_grouped_gemm_equals_the_per_expert_loop(tiny_hybrid, dtype, tol, monkeypatch):
    """40 tokens x 3 of 8 experts (some experts get none), beyond the gathered path."""
    moe = make_moe(tiny_hybrid, dtype)
    x = torch.randn(2, 20, moe.router.layer.in_features, generator=torch.Generator().manual_seed(1))
    x = x.to(dtype)
    x[1] = x[0]  # the same token twice must give the same output twice
    with torch.no_grad():
        assert layers._grouped_mm_applies(x, moe.input_linear)
        grouped = moe(x)
        monkeypatch.setattr(layers, "_grouped_mm_applies", lambda *a: False)
        looped = moe(x)
    assert grouped.shape == x.shape
    rel = ((grouped.float() - looped.float()).norm() / looped.float().norm()).item()
    assert rel < tol
    assert torch.equal(grouped[0], grouped[1])


def test_a_refused_grouped_gemm_falls_back_to_the_loop(tiny_hybrid, monkeypatch):
    """Fault injected (a torch whose grouped GEMM refuses the shapes, which this machine's
    torch does not): the block answers through the loop and stops trying."""
    moe = make_moe(tiny_hybrid, torch.float32)
    x = torch.randn(1, 40, moe.router.layer.in_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        monkeypatch.setattr(layers, "GROUPED_MM", False)
        expected = moe(x)
        monkeypatch.setattr(layers, "GROUPED_MM", True)

        def refuse(*args, **kwargs):
            raise RuntimeError("fake: grouped_mm refuses these shapes")

        monkeypatch.setattr(torch, "_grouped_mm", refuse)
        got = moe(x)
    assert torch.equal(got, expected)
    assert layers.GROUPED_MM is False
