"""The MoE block's grouped-GEMM path against its per-expert loop (layers.moe.MoE), and how
the kernel choice decides between them."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from granite_runtime.kernels import select  # noqa: E402
from granite_runtime.layers.moe import MoE  # noqa: E402
from granite_runtime.spec.config import GraniteConfig  # noqa: E402


def make_moe(tiny_hybrid, dtype, experts: int = 8, top_k: int = 3, size: int = 48) -> MoE:
    """An MoE block of the demo model's width with random weights (`.config` kept), given
    the kernels resolved for the CPU in `dtype`."""
    config = GraniteConfig.from_file(tiny_hybrid / "config.json")
    config = dataclasses.replace(config, num_experts=experts, top_k=top_k, expert_size=size)
    moe = MoE(config)
    moe.config = config
    gen = torch.Generator().manual_seed(0)
    for p in moe.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.1
    moe = moe.to(dtype)
    select.apply(moe, select.resolve("cpu", dtype))
    return moe


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_grouped_gemm_equals_the_per_expert_loop(tiny_hybrid, dtype, tol):
    """40 tokens x 3 of 8 experts (some experts get none), beyond the gathered path."""
    moe = make_moe(tiny_hybrid, dtype)
    x = torch.randn(2, 20, moe.router.layer.in_features, generator=torch.Generator().manual_seed(1))
    x = x.to(dtype)
    x[1] = x[0]  # the same token twice must give the same output twice
    with torch.no_grad():
        assert moe.kernels.grouped_mm and moe.grouped_mm
        grouped = moe(x)
        select.apply(moe, dataclasses.replace(moe.kernels, grouped_mm=False))
        assert not moe.grouped_mm
        looped = moe(x)
    assert grouped.shape == x.shape
    rel = ((grouped.float() - looped.float()).norm() / looped.float().norm()).item()
    assert rel < tol
    assert torch.equal(grouped[0], grouped[1])


def test_a_torch_whose_grouped_gemm_refuses_resolves_to_the_loop(tiny_hybrid, monkeypatch):
    """Fault injected (a torch whose grouped GEMM refuses the shapes, which this machine's
    torch does not): the choice is made once, at resolution, and the block answers through
    the loop with the loop's result; nothing is switched off from inside a forward."""
    moe = make_moe(tiny_hybrid, torch.float32)
    x = torch.randn(1, 40, moe.router.layer.in_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        select.apply(moe, dataclasses.replace(moe.kernels, grouped_mm=False))
        expected = moe(x)

        def refuse(*args, **kwargs):
            raise RuntimeError("fake: grouped_mm refuses these shapes")

        monkeypatch.setattr(torch, "_grouped_mm", refuse)
        choice = select.resolve("cpu", torch.float32)
        assert choice.grouped_mm is False
        select.apply(moe, choice)
        got = moe(x)
    assert torch.equal(got, expected)
