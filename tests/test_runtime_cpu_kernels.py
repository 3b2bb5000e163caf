"""The C decode kernels (kernels/cpu/csrc/cpu_decode.c) compute what the PyTorch
path computes, on fresh random inputs; and without a compiler the runtime falls back.

The parity tests (test_runtime_parity.py) run through these kernels too, against
transformers; these tests pin each kernel alone, at shapes the presets do not have.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from granite_runtime.engine.batch import Batch  # noqa: E402
from granite_runtime.engine.cache import HybridCache  # noqa: E402
from granite_runtime.kernels import select  # noqa: E402
from granite_runtime.kernels.choice import KernelChoice  # noqa: E402
from granite_runtime.kernels.cpu import ops as cpu_kernels  # noqa: E402
from granite_runtime.kernels.cpu.prepare import prepare_for_cpu  # noqa: E402
from granite_runtime.layers.linear import DecodeLinear  # noqa: E402
from granite_runtime.layers.norm import RMSNorm  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402

C_KERNELS = KernelChoice(c_decode=True)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def without_c_kernels(model):
    """The PyTorch path (what a machine without a C compiler runs) for the same modules."""
    select.apply(model, dataclasses.replace(model.kernels, c_decode=False))


def test_kernels_build_on_this_machine():
    # CI's Debian image has gcc: if the build broke, every CPU decode would silently take
    # the slower path, so this is a failure, not a skip.
    assert cpu_kernels.available(), "csrc/cpu_decode.c did not build with this machine's cc"


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize(("out_f", "in_f"), [(37, 29), (300, 768), (64, 1000)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_torch(rows, out_f, in_f, bias):
    g = torch.Generator().manual_seed(rows * out_f + in_f)
    lin = torch.nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g))
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=g))
    x = torch.randn(rows, 1, in_f, generator=g)
    layer = DecodeLinear(lin)
    select.apply(layer, C_KERNELS)
    with torch.no_grad():
        ours = layer(x)
    assert ours.shape == (rows, 1, out_f)
    assert _rel(ours, F.linear(x, lin.weight, lin.bias)) < 1e-6


def test_add_rms_norm_matches_torch_and_adds_in_place():
    g = torch.Generator().manual_seed(5)
    norm = RMSNorm(100, 1e-5)
    select.apply(norm, C_KERNELS)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(100, generator=g))
        x, delta = torch.randn(3, 1, 100, generator=g), torch.randn(3, 1, 100, generator=g)
        expected_x = x + 0.25 * delta
        expected_h = norm.weight * F.rms_norm(expected_x, (100,), eps=1e-5)
        held = x.clone()
        new_x, h = norm.add_forward(held, delta, 0.25)
    assert _rel(new_x, expected_x) < 1e-6 and _rel(h, expected_h) < 1e-6
    assert new_x.data_ptr() == held.data_ptr()  # the residual add happened in place


def _decode(model, slots, lengths, steps, seed):
    """Prefill each slot, then `steps` batched decode steps; returns logits and the pools."""
    cache = HybridCache(model.config, max(slots) + 1, 64, torch.float32, "cpu")
    tokens, starts, logits_seen = [], [], []
    with torch.no_grad():
        for slot, n in zip(slots, lengths, strict=True):
            ids = torch.randint(0, 500, (1, n), generator=torch.Generator().manual_seed(seed + n))
            logits = model(ids, Batch.make([slot], [0], "cpu"), cache)
            tokens.append(int(logits[0, -1].argmax()))
            starts.append(n)
        for _ in range(steps):
            logits = model(
                torch.tensor([[t] for t in tokens]), Batch.make(slots, starts, "cpu"), cache
            )
            logits_seen.append(logits[:, -1])
            tokens = logits[:, -1].argmax(-1).tolist()
            starts = [s + 1 for s in starts]
    return torch.stack(logits_seen), cache


@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense"])
def test_decode_with_kernels_equals_pytorch_path(fixture, request):
    """Scattered slots, batch 3: the fused Mamba step reads and writes each slot's conv
    window and state where they lie in the pool."""
    model = load_model(request.getfixturevalue(fixture), "float32", "cpu")
    assert model.kernels.c_decode and prepare_for_cpu(model) == "c-kernels"
    ours, cache_k = _decode(model, [4, 1, 2], [11, 23, 5], 5, seed=7)
    without_c_kernels(model)
    reference, cache_r = _decode(model, [4, 1, 2], [11, 23, 5], 5, seed=7)
    assert _rel(ours, reference) < 1e-5
    if model.config.mamba_layers:  # tiny-dense has none
        assert _rel(cache_k.ssm, cache_r.ssm) < 1e-5
        assert _rel(cache_k.conv, cache_r.conv) < 1e-6


def test_mamba_step_with_groups_biases_and_dt_limit(tmp_path):
    """Shapes and options no preset has: 2 groups, projection biases, a finite dt clamp."""
    from granite_ops_kit.demo.checkpoint import write_demo_model

    path = write_demo_model(
        tmp_path / "grouped",
        "tiny-hybrid",
        overrides={"mamba_n_groups": 2, "mamba_proj_bias": True, "time_step_limit": [0.01, 0.2]},
    ).path
    model = load_model(path, "float32", "cpu")
    assert model.config.mamba_groups == 2 and model.config.time_step_max == 0.2
    kernels = model.kernels
    assert kernels.c_decode
    without_c_kernels(model)
    reference, ref_cache = _decode(model, [2, 0], [9, 14], 4, seed=3)
    select.apply(model, kernels)
    ours, cache = _decode(model, [2, 0], [9, 14], 4, seed=3)
    assert _rel(ours, reference) < 1e-5
    assert _rel(cache.ssm, ref_cache.ssm) < 1e-5


def test_without_a_compiler_the_runtime_falls_back(tmp_path):
    """Fault injected (no C compiler, an empty kernel cache): the runtime takes the oneDNN
    path and still decodes."""
    code = (
        "import torch; from granite_runtime.kernels import select;"
        "from granite_runtime.kernels.cpu import ops, prepare;"
        "m = torch.nn.Sequential(torch.nn.Linear(8, 4));"
        "select.apply(m, select.resolve('cpu', torch.float32));"
        "print(ops.available(), prepare.prepare_for_cpu(m), type(m[0]).__name__)"
    )
    env = {"CC": str(tmp_path / "no-such-cc"), "GKIT_KERNEL_CACHE": str(tmp_path / "k")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "onednn", "PackedLinear"]
