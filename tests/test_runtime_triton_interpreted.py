"""The Triton kernels on the CPU, through Triton's own interpreter (TRITON_INTERPRET=1).

The kernels are written for CUDA and their GPU tests run on the device machine only; the
interpreter runs the same kernel code on CPU tensors, block by block, so what they index,
mask and accumulate is checked in CI too (not their speed, nor anything GPU-only such as
programmatic launch). `make test` installs Triton and the NumPy its interpreter needs
(before 2.0: it converts one-element arrays to ints) into .venv/triton-interpreter, apart
from the project's own NumPy. Each case runs in a subprocess with that folder first on the
path: this file, run as a script with the case's name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INTERPRETER = REPO / ".venv" / "triton-interpreter"


def _interpreted(case: str, *args: str) -> str:
    if not (INTERPRETER / "triton").is_dir():
        pytest.fail(f"Triton's interpreter is not in {INTERPRETER}: `make test` installs it.")
    path = os.pathsep.join([str(INTERPRETER), str(REPO / "runtime"), str(REPO)])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, __file__, case, *args],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done.stdout


# case -> how many checks it prints "ok" for (each case's docstring says what it checks)
CASES = {
    "chunk_attention": 4,  # the chunk graphs' block attention against SDPA
    "padded_chunk": 6,  # a padded chunk, block attention against one-token rows
    "decode_attention": 2,
    "ssd_step": 4,  # the decode graphs' Mamba state update
    "conv_update": 2,  # the decode graphs' conv window
    "chunked_scan": 7,  # prefill's SSD scan, dt as is and raw, states in a pool
    "fused": 5,  # the fused norms, gates, prefill conv and its window
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_kernel_equals_its_pytorch_reference(case, tmp_path):
    out = _interpreted(case, str(tmp_path))
    assert out.count("ok") == CASES[case], out


# ---- the cases, run in the subprocess ---------------------------------------------------
def _reference(q, k_pool, v_pool, slots, starts, scale):
    """Causal attention of q (B, L, H, D), row b's token i at starts[b] + i of slots[b]."""
    import torch
    import torch.nn.functional as F

    b, length, heads, _ = q.shape
    out = torch.empty_like(q)
    for row in range(b):
        slot, start = int(slots[row]), int(starts[row])
        group = heads // k_pool.shape[1]
        keys = k_pool[slot, :, : start + length].repeat_interleave(group, 0)
        values = v_pool[slot, :, : start + length].repeat_interleave(group, 0)
        seen = torch.arange(start + length)[None, :] <= (start + torch.arange(length))[:, None]
        out[row] = F.scaled_dot_product_attention(
            q[row].transpose(0, 1), keys, values, attn_mask=seen, scale=scale
        ).transpose(0, 1)
    return out


def case_chunk_attention(_scratch: str) -> None:
    import torch

    from granite_runtime.kernels.triton.chunk_attention import chunk_attention

    torch.manual_seed(0)
    # heads / KV heads / head dim / chunk: groups of 4 (h-micro), 3 (h-tiny, padded to 4),
    # 1 and 8; a head dim under its block; chunks that end inside a query block
    for heads, kv, dim, length in [(8, 2, 64, 37), (12, 4, 48, 20), (4, 4, 32, 70), (16, 2, 16, 9)]:
        k_pool, v_pool = torch.randn(3, kv, 160, dim), torch.randn(3, kv, 160, dim)
        q = torch.randn(2, heads, length, dim).transpose(1, 2)  # strided, as Attention has it
        slots, starts = torch.tensor([2, 0]), torch.tensor([0, 81])
        got = chunk_attention(q, k_pool, v_pool, slots, starts, 0.3)
        want = _reference(q, k_pool, v_pool, slots, starts, 0.3)
        error = (got - want).abs().max().item()
        assert error < 1e-5, (heads, kv, dim, length, error)
        print("ok", heads, kv, dim, length, error)


def _padded_chunk(model, block: bool, real: int):
    """Logits and cache after a 19-token prompt in slot 2, then a chunk of 64 tokens padded
    (`real` of them real) as a chunk graph runs it, eagerly; `block`: the block kernel."""
    import dataclasses

    import torch

    from granite_runtime.engine.batch import Batch
    from granite_runtime.engine.cache import HybridCache
    from granite_runtime.kernels import select

    select.apply(model, dataclasses.replace(model.kernels, chunk_attention=block))
    ids = torch.Generator().manual_seed(1)
    cache = HybridCache(model.config, 4, 160, torch.float32, "cpu")
    with torch.no_grad():
        model(torch.randint(0, 1000, (1, 19), generator=ids), Batch.make([2], [0], "cpu"), cache)
        tokens = torch.randint(0, 1000, (1, 64), generator=ids)
        batch = Batch.padded(torch.tensor([2]), torch.tensor([19]), torch.tensor([real]))
        return model(tokens, batch, cache), cache


def case_padded_chunk(root: str) -> None:
    """A chunk graph's forward with the block kernel and with the one-token rows: the same
    logits, keys, values and state, for every real length."""
    import torch

    from granite_ops_kit.demo.checkpoint import write_demo_model
    from granite_runtime.model.loader import load_model

    for name in ("tiny-hybrid", "tiny-dense"):
        model = load_model(write_demo_model(Path(root) / name, name).path, "float32", "cpu")
        for real in (1, 37, 64):
            (rows, a), (block, b) = (
                _padded_chunk(model, False, real),
                _padded_chunk(model, True, real),
            )
            assert ((rows - block).norm() / rows.norm()).item() < 1e-5, (name, real)
            end = 19 + real  # what the padding writes past the prompt is overwritten later
            for pool in ("k", "v"):
                kept, got = getattr(a, pool)[..., :end, :], getattr(b, pool)[..., :end, :]
                assert torch.allclose(kept, got, atol=1e-5), (name, real, pool)
            for pool in ("ssm", "conv"):  # the Mamba layers after the attention layer
                assert torch.allclose(getattr(a, pool), getattr(b, pool), atol=1e-5), (name, pool)
            assert a.k.numel() and not torch.equal(a.k, torch.zeros_like(a.k))
            print("ok", name, real)


def case_decode_attention(_scratch: str) -> None:
    import torch

    from granite_runtime.kernels.triton.decode import decode_attention

    torch.manual_seed(0)
    for heads, kv, dim in [(8, 2, 64), (12, 4, 48)]:
        k_pool, v_pool = torch.randn(3, kv, 96, dim), torch.randn(3, kv, 96, dim)
        q = torch.randn(4, heads, dim)
        slots, starts = torch.tensor([0, 2, 1, 2]), torch.tensor([5, 40, 95, 0])
        got = decode_attention(q, k_pool, v_pool, slots, starts, 0.125)
        want = _reference(q[:, None], k_pool, v_pool, slots, starts, 0.125)[:, 0]
        error = (got - want).abs().max().item()
        assert error < 1e-5, (heads, kv, dim, error)
        print("ok", heads, kv, dim, error)


def case_ssd_step(_scratch: str) -> None:
    """The decode graphs' state update: scattered slots, groups > 1, sizes that are not
    powers of 2, dt as is and raw (softplus(dt + bias), clamped, in the kernel); slots no
    row holds stay as they were."""
    import torch
    import torch.nn.functional as F

    from granite_runtime.kernels.triton.decode import ssd_step
    from granite_runtime.layers import ssd

    gen = torch.Generator().manual_seed(0)
    for h, g, p, n in [(12, 3, 20, 48), (8, 1, 16, 32)]:
        for raw in (False, True):
            x, bm, cm = (torch.randn(*s, generator=gen) for s in ((3, h, p), (3, g, n), (3, g, n)))
            dt, bias = torch.randn(3, h, generator=gen), torch.randn(h, generator=gen)
            a, d = -torch.rand(h, generator=gen) - 0.1, torch.randn(h, generator=gen)
            pool, slots = torch.randn(6, h, p, n, generator=gen), torch.tensor([4, 0, 2])
            limit = (0.01, 0.5)
            step_dt = F.softplus(dt + bias).clamp(*limit) if raw else dt.abs() * 0.1
            expected = pool.clone()
            y_ref, expected[slots] = ssd.step(x, step_dt, a, bm, cm, d, pool[slots].clone())
            got = pool.clone()
            extra = {"dt_bias": bias, "dt_limit": limit} if raw else {}
            y = ssd_step(x, dt if raw else step_dt, a, bm, cm, d, got, slots, **extra)
            error = max((y - y_ref).abs().max().item(), (got - expected).abs().max().item())
            assert error < 1e-5, (h, g, p, n, raw, error)
            assert torch.equal(got[[1, 3, 5]], pool[[1, 3, 5]])
            print("ok", h, g, p, n, raw, error)


def case_conv_update(_scratch: str) -> None:
    """The decode graphs' conv step: silu(conv over the window and the new column), the
    window shifted in place at each row's slot, other slots untouched."""
    import torch

    from granite_runtime.kernels.triton.decode import conv_update

    gen = torch.Generator().manual_seed(1)
    for c in (768, 1000):  # a multiple of the block and not
        x, weight = torch.randn(3, c, generator=gen), torch.randn(c, 4, generator=gen)
        bias, pool = torch.randn(c, generator=gen), torch.randn(5, c, 3, generator=gen)
        slots = torch.tensor([3, 0, 4])
        full = torch.cat([pool[slots], x[:, :, None]], dim=-1)
        expected = torch.nn.functional.silu((full * weight).sum(-1) + bias)
        got = pool.clone()
        out = conv_update(x, got, weight, bias, slots)
        error = (out - expected).abs().max().item()
        assert error < 1e-5, (c, error)
        assert torch.equal(got[slots], full[:, :, 1:]) and torch.equal(got[[1, 2]], pool[[1, 2]])
        print("ok", c, error)


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def case_chunked_scan(_scratch: str) -> None:
    """Prefill's SSD scan: x, B and C strided views of one tensor as the conv leaves them,
    a partial last chunk, groups > 1, sizes that are not powers of 2; a starting state
    updated in place where the pool row lies; dt raw (softplus, clamp) and padded rows;
    states read and written at slots of a pool."""
    import torch

    from granite_runtime.kernels.triton.scan import chunked_scan
    from granite_runtime.layers import ssd

    gen = torch.Generator().manual_seed(2)
    for h, g, p, n, length, chunk, with_state in [
        (12, 3, 20, 48, 75, 32, False), (12, 3, 20, 48, 75, 32, True), (4, 2, 16, 32, 5, 64, True)
    ]:  # fmt: skip
        xbc = torch.randn(2, length, h * p + 2 * g * n, generator=gen)
        x = xbc[..., : h * p].view(2, length, h, p)
        bm = xbc[..., h * p : h * p + g * n].view(2, length, g, n)
        cm = xbc[..., h * p + g * n :].view(2, length, g, n)
        dt = torch.nn.functional.softplus(torch.randn(2, length, h, generator=gen) - 2)
        a, d = -torch.exp(torch.randn(h, generator=gen) * 0.5), torch.randn(h, generator=gen)
        state = torch.randn(2, h, p, n, generator=gen) if with_state else None
        y_ref, final_ref = ssd.chunked_scan(x, dt, a, bm, cm, d, chunk, state)
        pool = state.clone() if with_state else None
        y, final = chunked_scan(x, dt, a, bm, cm, d, chunk, pool, final=pool)
        error = max(_rel(y, y_ref), _rel(final, final_ref))
        assert error < 2e-5, (h, g, p, n, length, chunk, with_state, error)
        assert not with_state or final.data_ptr() == pool.data_ptr()
        print("ok", h, g, p, n, length, chunk, with_state, error)
    # dt raw from in_proj (a strided view), softplus(dt + bias) clamped inside the kernel,
    # and a padded chunk's rows, whose tokens past their lengths must leave no trace
    for limit, lengths, chunk in [((0.0, float("inf")), None, 32), ((0.05, 0.4), [75, 31], 24)]:
        h, g, p, n, length = 12, 3, 20, 48, 75  # chunk 24: not a power of 2
        xbc = torch.randn(2, length, h * p + 2 * g * n + h, generator=gen)
        x = xbc[..., : h * p].view(2, length, h, p)
        bm = xbc[..., h * p : h * p + g * n].view(2, length, g, n)
        cm = xbc[..., h * p + g * n : h * p + 2 * g * n].view(2, length, g, n)
        raw, bias = xbc[..., -h:] - 2, torch.randn(h, generator=gen)
        a, d = -torch.exp(torch.randn(h, generator=gen) * 0.5), torch.randn(h, generator=gen)
        dt = torch.nn.functional.softplus(raw + bias).clamp(*limit)
        if lengths is not None:
            dt = dt * (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None])[..., None]
        state = torch.randn(2, h, p, n, generator=gen)
        y_ref, final_ref = ssd.chunked_scan(x, dt, a, bm, cm, d, chunk, state)
        marks = None if lengths is None else torch.tensor(lengths)
        y, final = chunked_scan(
            x, raw, a, bm, cm, d, chunk, state.clone(), dt_bias=bias, dt_limit=limit, lengths=marks
        )
        error = max(_rel(y, y_ref), _rel(final, final_ref))
        assert error < 2e-5, (limit, lengths, error)
        print("ok raw dt", limit, lengths, error)
        # the states read and written in place at slots 3 and 0 of a pool, fp32 and fp16
        for dtype, tol in ((torch.float32, 2e-5), (torch.float16, 1e-3)):
            pool = torch.randn(5, h, p, n, generator=gen).to(dtype)
            pool[[3, 0]] = state.to(dtype)
            kept = pool.clone()
            y, _ = chunked_scan(
                x, raw, a, bm, cm, d, chunk, pool, final=pool, slots=torch.tensor([3, 0]),
                dt_bias=bias, dt_limit=limit, lengths=marks,
            )  # fmt: skip
            assert _rel(y, y_ref) < tol and _rel(pool[[3, 0]].float(), final_ref) < tol, dtype
            assert torch.equal(pool[[1, 2, 4]], kept[[1, 2, 4]]), dtype
        print("ok slots", limit, lengths)


def case_fused(_scratch: str) -> None:
    """Residual add + RMSNorm, the gated RMSNorm of 2 groups, SiLU * up, and the prefill
    conv reading its window from the pool (which it leaves as it was), then moving that
    window, on strided inputs."""
    import torch
    import torch.nn.functional as F

    from granite_runtime.kernels.triton import fused
    from granite_runtime.layers.norm import RMSNorm

    gen = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    x, delta, norm = rand(3, 5, 1000), rand(3, 5, 1000), RMSNorm(1000, 1e-5)
    norm.weight.data = rand(1000)
    total, normed = fused.add_rms_norm(x, delta, 0.25, norm.weight, 1e-5)
    want = torch.add(x, delta, alpha=0.25)
    assert max(_rel(total, want), _rel(normed, norm(want))) < 1e-6
    print("ok add_rms_norm")
    proj, gated = rand(7, 2 * 768 + 9), RMSNorm(768, 1e-6, groups=2)
    z, y = proj[:, :768], proj[:, 768 : 2 * 768] * 3
    gated.weight.data = rand(768)
    assert _rel(fused.gated_rms_norm(y, z, gated.weight, 1e-6, 2), gated(y, gate=z)) < 1e-6
    print("ok gated_rms_norm")
    gate_up = rand(4, 2, 2 * 1100)
    gate, up = gate_up.chunk(2, dim=-1)
    assert _rel(fused.silu_mul(gate_up), F.silu(gate) * up) < 1e-6
    print("ok silu_mul")
    xbc = rand(2, 37, 311)[..., 5:305]  # 300 channels, strided as the split leaves them
    weight, bias, pool = rand(300, 4), rand(300), rand(5, 300, 3)
    slots = torch.tensor([3, 1])
    full = torch.cat([pool[slots], xbc.transpose(1, 2)], dim=-1)
    want = F.silu(F.conv1d(full, weight[:, None], bias, groups=300)).transpose(1, 2)
    before = pool.clone()
    assert _rel(fused.conv_prefill(xbc, pool, weight, bias, slots), want) < 1e-6
    assert torch.equal(pool, before)
    print("ok conv_prefill")
    from granite_runtime.engine.batch import Batch

    # then the window moved past the chunk, in place: whole rows, and a padded chunk's
    # rows of 37, 2 and 1 real tokens (the last two still partly in the old window)
    for lengths in (None, [37, 2], [1, 37]):
        pool = before.clone()
        if lengths is None:
            want = Batch.make(slots.tolist(), [0, 0], "cpu").window_after(pool[slots], xbc)
        else:
            marks = torch.tensor(lengths)
            want = Batch.padded(slots, torch.zeros(2), marks).window_after(pool[slots], xbc)
        fused.conv_window_after(xbc, pool, slots, None if lengths is None else marks)
        assert torch.equal(pool[slots], want), lengths
        others = [s for s in range(5) if s not in slots.tolist()]
        assert torch.equal(pool[others], before[others]), lengths
    print("ok conv_window_after")


if __name__ == "__main__":
    import torch

    # every torch.empty is filled with NaN, so an element a kernel forgets to write fails
    torch.use_deterministic_algorithms(True, warn_only=True)
    globals()[f"case_{sys.argv[1]}"](*sys.argv[2:])
