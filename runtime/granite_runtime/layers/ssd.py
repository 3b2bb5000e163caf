"""Mamba-2's state space duality (SSD) in plain PyTorch: the chunked scan and the one-step update.

The reference path for every device; CUDA kernels (Triton) must match it. All arithmetic is
in float32 whatever the model dtype, as the state accumulates over thousands of steps.

Shapes: x (B, L, H, P) heads of width P; dt (B, L, H) after softplus; A (H,) negative;
Bm, Cm (B, L, G, N) with H divisible by G (head h reads group h // (H/G)); D (H,);
state (B, H, P, N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _segment_sums(dA: torch.Tensor) -> torch.Tensor:
    """seg[..., l, s] = sum of dA over (s, l] for s <= l, -inf above the diagonal.

    Summing masked copies (rather than subtracting two cumulative sums) keeps the exponent
    exact when the cumulative sum grows large within a chunk.
    """
    q = dA.shape[-1]
    grid = dA.unsqueeze(-1).expand(*dA.shape, q)  # grid[..., i, s] = dA_i
    strictly_below = torch.ones(q, q, dtype=torch.bool, device=dA.device).tril(-1)
    seg = grid.masked_fill(~strictly_below, 0.0).cumsum(dim=-2)
    on_or_below = torch.ones(q, q, dtype=torch.bool, device=dA.device).tril(0)
    return seg.masked_fill(~on_or_below, float("-inf"))


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., G, N) -> (..., H, N): each group serves H/G consecutive heads."""
    return t.repeat_interleave(heads // t.shape[-2], dim=-2)


def chunked_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    D: torch.Tensor,
    chunk: int,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs y (B, L, H, P) and the final state (B, H, P, N), starting from `state`."""
    b, length, h, p = x.shape
    n = Bm.shape[-1]
    pad = (-length) % chunk
    x32, dt32 = x.float(), dt.float()
    Bh, Ch = _per_head(Bm.float(), h), _per_head(Cm.float(), h)
    if pad:
        x32, dt32, Bh, Ch = (
            F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x32, dt32, Bh, Ch)
        )
    c = x32.shape[1] // chunk
    xc = x32.view(b, c, chunk, h, p)
    dtc = dt32.view(b, c, chunk, h)
    Bc, Cc = Bh.view(b, c, chunk, h, n), Ch.view(b, c, chunk, h, n)

    dA = (dtc * A.float()).permute(0, 3, 1, 2)  # (b, h, c, q)
    seg = _segment_sums(dA)  # (b, h, c, q, q)
    cum = dA.cumsum(dim=-1)  # (b, h, c, q)
    xdt = xc * dtc.unsqueeze(-1)  # (b, c, q, h, p)

    # Within a chunk: attention-like mixing with the decay mask.
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * torch.exp(seg)
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)

    # Each chunk's own contribution to the state at its end.
    to_end = torch.exp(cum[..., -1:] - cum)  # (b, h, c, q)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, to_end, xdt)

    # Across chunks: a short sequential recurrence over c chunk boundaries.
    carry = (
        torch.zeros(b, h, p, n, dtype=torch.float32, device=x.device)
        if state is None
        else state.float()
    )
    chunk_decay = torch.exp(cum[..., -1])  # (b, h, c)
    entering = []
    for i in range(c):
        entering.append(carry)
        carry = carry * chunk_decay[:, :, i, None, None] + chunk_states[:, i]
    starts = torch.stack(entering, dim=1)  # (b, c, h, p, n)

    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, starts, torch.exp(cum))
    y = y.reshape(b, c * chunk, h, p)[:, :length]
    y = y + x.float() * D.float().view(1, 1, h, 1)
    return y, carry


def step(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    D: torch.Tensor,
    state: torch.Tensor,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step. x (B, H, P), dt (B, H), Bm/Cm (B, G, N), state (B, H, P, N).

    Heads are viewed as (G, H/G) so each group's B and C broadcast over its heads without
    being copied H/G times. With `inplace`, `state` (fp32) is updated where it lies, which
    saves the decode step two passes over the largest tensor it touches.
    """
    b, h, p = x.shape
    g, n = Bm.shape[1], Bm.shape[2]
    xg = x.float().view(b, g, h // g, p)
    dtg = dt.float().view(b, g, h // g)
    decay = torch.exp(dtg * A.float().view(g, h // g))[..., None, None]  # (b, g, h/g, 1, 1)
    dtx = (dtg.unsqueeze(-1) * xg).unsqueeze(-1)  # (b, g, h/g, p, 1)
    Bg = Bm.float().view(b, g, 1, 1, n)
    if inplace:
        new = state.view(b, g, h // g, p, n)
        new.mul_(decay).addcmul_(dtx, Bg)
    else:
        new = torch.addcmul(state.float().view(b, g, h // g, p, n) * decay, dtx, Bg)
    # One (H/G * P, N) x (N,) product per (batch, group): a few large gemvs, not many tiny ones.
    y = torch.bmm(new.view(b * g, (h // g) * p, n), Cm.float().reshape(b * g, n, 1))
    y = y.view(b, g, h // g, p) + xg * D.float().view(g, h // g, 1)
    return y.view(b, h, p), new.view(b, h, p, n)
