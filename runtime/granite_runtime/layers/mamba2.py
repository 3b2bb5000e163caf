"""The Mamba-2 mixer of Granite's hybrid layers: in_proj, a causal depthwise conv, the SSD
scan (chunked for prompts, one step for decode) and the gated norm before out_proj. The Mamba
gate is applied before the gated norm, as transformers' GraniteMoeHybrid does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from granite_runtime.engine.batch import Batch
from granite_runtime.engine.cache import HybridCache
from granite_runtime.kernels.choice import PYTORCH, KernelChoice
from granite_runtime.kernels.cpu import ops as cpu_ops
from granite_runtime.layers import ssd
from granite_runtime.layers.linear import c_kernel_takes, one_row_fused
from granite_runtime.layers.norm import RMSNorm
from granite_runtime.parallel import tp
from granite_runtime.spec.config import GraniteConfig


class Mamba2(nn.Module):
    kernels: KernelChoice = PYTORCH

    def __init__(self, config: GraniteConfig, layer: int):
        super().__init__()
        c = config
        self.heads, self.head_dim, self.groups = c.mamba_heads, c.mamba_head_dim, c.mamba_groups
        self.state, self.inner, self.conv_dim = c.mamba_state, c.mamba_inner, c.mamba_conv_dim
        self.chunk, self.layer = c.mamba_chunk, layer
        self.dt_limit = (c.time_step_min, c.time_step_max)
        self.in_proj = nn.Linear(
            c.hidden_size, self.inner + self.conv_dim + self.heads, bias=c.mamba_proj_bias
        )
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, c.mamba_conv, groups=self.conv_dim, bias=c.mamba_conv_bias
        )
        self.dt_bias = nn.Parameter(torch.empty(self.heads))
        self.A_log = nn.Parameter(torch.empty(self.heads))
        self.D = nn.Parameter(torch.empty(self.heads))
        self.norm = RMSNorm(
            self.inner, c.rms_norm_eps, groups=self.groups, across_ranks=c.mamba_norm_across_ranks
        )
        self.out_proj = nn.Linear(self.inner, c.hidden_size, bias=c.mamba_proj_bias)
        # the output leaves this module already summed over ranks (_gated_out); with an
        # out_proj bias the scale would not commute, so the plain order is kept
        self.reduces_output = c.mamba_norm_across_ranks and not c.mamba_proj_bias

    def _constants(self) -> tuple[torch.Tensor, ...]:
        """fp32 A, D, dt_bias and the (C, K) conv weight, derived once from the loaded weights."""
        if getattr(self, "_const", None) is None or self._const[0].device != self.A_log.device:
            self._const = (
                -torch.exp(self.A_log.float()),
                self.D.float(),
                self.dt_bias.float(),
                self.conv1d.weight.squeeze(1),
            )
        return self._const

    def _conv(self, xbc: torch.Tensor, batch: Batch, cache: HybridCache) -> torch.Tensor:
        """Causal depthwise conv continuing from each slot's last d_conv-1 inputs."""
        index = cache.mamba_index[self.layer]
        k = self.kernels
        if k.triton and xbc.shape[1] == 1:  # one fused pass; the window shifts in place
            out = k.ops.decode.conv_update(
                xbc[:, 0], cache.conv[index], self._constants()[3], self.conv1d.bias,
                batch.slots, launch=k.launch,
            )  # fmt: skip
            return out.unsqueeze(1)
        weight = self._constants()[3]  # (C, K)
        if k.triton:  # one pass over the chunk, the window read from the pool, then moved
            pool, bias = cache.conv[index], self.conv1d.bias
            out = k.ops.fused.conv_prefill(xbc, pool, weight, bias, batch.slots)
            k.ops.fused.conv_window_after(xbc, pool, batch.slots, batch.lengths)  # same stream
            return out
        rows = batch.rows
        past = cache.conv[index, rows]  # (B, C, K-1); a view when slots are consecutive
        full = torch.cat([past.to(xbc.dtype), xbc.transpose(1, 2)], dim=-1)  # (B, C, K-1+L)
        if xbc.shape[1] == 1:
            out = (full * weight).sum(-1, keepdim=True)
            if self.conv1d.bias is not None:
                out = out + self.conv1d.bias[:, None]
        else:
            out = F.conv1d(full, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)
        out = F.silu(out).transpose(1, 2)  # (B, L, C)
        # after the convolution has read the old window
        cache.conv[index, rows] = batch.window_after(past, xbc).to(cache.conv.dtype)
        return out

    def _cpu_step(self, x: torch.Tensor, batch: Batch, cache: HybridCache) -> torch.Tensor | None:
        """The whole decode step but the two projections in one C call (cpu_decode.c), or
        None where it does not apply (not fp32 on the CPU, a prefill, no compiler)."""
        index = cache.mamba_index[self.layer]
        conv, ssm = cache.conv[index], cache.ssm[index]
        if x.shape[1] != 1 or self.norm.across_ranks:
            return None
        if not c_kernel_takes(self.kernels, x, conv, ssm, self.norm.weight):
            return None
        proj = self.in_proj(x)
        A, D, dt_bias, conv_w = self._constants()
        bias = self.conv1d.bias
        if not cpu_ops.accepts(proj, conv_w, A, D, dt_bias, *([bias] if bias is not None else [])):
            return None
        shape = cpu_ops.MambaShape(
            x.shape[0], self.inner, self.conv_dim, conv_w.shape[1], self.heads, self.head_dim,
            self.groups, self.state, *self.dt_limit, self.norm.eps,
        )  # fmt: skip
        weights = (conv_w, bias, A, D, dt_bias, self.norm.weight)
        y = cpu_ops.mamba_step(shape, proj, conv, ssm, batch.slots, weights)
        return self.out_proj(y.view(x.shape[0], 1, self.inner))

    def forward(self, x: torch.Tensor, batch: Batch, cache: HybridCache) -> torch.Tensor:
        if x.device.type == "cpu" and (out := self._cpu_step(x, batch, cache)) is not None:
            return out
        return self.from_projection(self.in_proj(x), batch, cache)

    def fused_input(self, x: torch.Tensor, cache: HybridCache) -> list[torch.Tensor] | None:
        """[in_proj's weight] where one token's norm and in_proj run as one kernel
        (fused_linear, model.granite.DecoderLayer) and `from_projection` follows; else None."""
        return [self.in_proj.weight] if one_row_fused(self.kernels, x, self.in_proj) else None

    def from_projection(self, proj: torch.Tensor, batch: Batch, cache: HybridCache):
        """The mixer after in_proj (proj: (B, L, in_proj's width)), so a caller that fused
        the norm into in_proj (model.granite.DecoderLayer) continues from here."""
        z, xbc_dt = proj.split([self.inner, self.conv_dim + self.heads], dim=-1)
        y = batch.each(lambda xbc_dt, part: self._sequence_mix(xbc_dt, part, cache), xbc_dt)
        # The gated norm sees the fp32 scan output, as transformers' prefill path does.
        return self._gated_out(y.reshape(z.shape), z, proj.dtype)

    def _sequence_mix(self, xbc_dt: torch.Tensor, batch: Batch, cache: HybridCache):
        """y (fp32, (B, L, inner)): the convolution and the scan of one plain batch, each
        continuing from its slots' state in the pool, which is left holding the new state."""
        b, length, _ = xbc_dt.shape
        xbc, dt = xbc_dt.split([self.conv_dim, self.heads], dim=-1)
        xbc = self._conv(xbc, batch, cache)
        xs, Bm, Cm = xbc.split(
            [self.inner, self.groups * self.state, self.groups * self.state], dim=-1
        )
        xs = xs.view(b, length, self.heads, self.head_dim)
        Bm, Cm = (t.view(b, length, self.groups, self.state) for t in (Bm, Cm))
        if self.kernels.triton and length == 1:  # softplus(dt) inside; the state in the pool
            A, D, dt_bias, _ = self._constants()
            ssm = cache.ssm[cache.mamba_index[self.layer]]
            y = self.kernels.ops.decode.ssd_step(
                xs[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], D, ssm, batch.slots,
                dt_bias=dt_bias, dt_limit=self.dt_limit, launch=self.kernels.launch,
            )  # fmt: skip
        else:
            y = self._scan(xs, dt, Bm, Cm, batch, cache)
        return y.reshape(b, length, self.inner)

    def _dt(self, dt: torch.Tensor) -> torch.Tensor:
        dt = F.softplus(dt.float() + self._constants()[2])
        if self.dt_limit != (0.0, float("inf")):  # softplus is already >= 0
            dt = dt.clamp(*self.dt_limit)
        return dt

    def _scan(self, xs, dt, Bm, Cm, batch: Batch, cache: HybridCache) -> torch.Tensor:
        """y (fp32) of the SSD over xs (B, L, H, P) from each row's state in the pool,
        which is left holding the state after the last token. dt: in_proj's, raw."""
        A, D, dt_bias, _ = self._constants()
        index = cache.mamba_index[self.layer]
        if xs.shape[1] > 1 and self.kernels.triton_scan:
            # the states read and written in the pool at the rows' slots; softplus, clamp
            # and padding applied inside
            pool = cache.ssm[index]
            return self.kernels.ops.scan.chunked_scan(
                xs, dt, A, Bm, Cm, D, self.chunk, pool, final=pool, slots=batch.slots,
                dt_bias=dt_bias, dt_limit=self.dt_limit, lengths=batch.lengths,
            )[0]  # fmt: skip
        dt = batch.drop_padding(self._dt(dt))
        rows = batch.rows
        held = cache.ssm[index, rows]  # a view when the rows' slots are consecutive
        in_place = isinstance(rows, slice) and held.dtype == torch.float32
        if xs.shape[1] == 1:
            y, state = ssd.step(xs[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], D, held, in_place)
        else:
            y, state = ssd.chunked_scan(xs, dt, A, Bm, Cm, D, self.chunk, held)
            in_place = False
        if not in_place:
            cache.ssm[index, rows] = state.to(cache.ssm.dtype)
        return y

    def _gated_out(self, y: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """out_proj(gated RMSNorm(y, z)). Split over ranks with one group (`reduces_output`),
        the norm's per-token scale commutes with out_proj, so each rank projects its
        unscaled part and one all-reduce carries both the partial outputs and the sums of
        squares: one collective where the plain order needs two."""
        n, k = self.norm, self.kernels
        if n.groups == 1 and one_row_fused(k, z, self.out_proj):
            return k.ops.fused_linear.gated_norm_linear(
                y, z, n.weight, n.eps, self.out_proj.weight, launch=k.launch
            )
        if not self.reduces_output and not self.norm.across_ranks and k.triton:
            return self.out_proj(
                k.ops.fused.gated_rms_norm(y, z, n.weight, n.eps, n.groups, launch=k.launch)
            )
        if not self.reduces_output:
            return self.out_proj(self.norm(y, gate=z).to(dtype))
        h = y.float() * F.silu(z.float())
        squares = h.pow(2).sum(-1, keepdim=True)
        partial = self.out_proj(self.norm.weight * h.to(dtype))
        both = tp.all_reduce(torch.cat([partial.float(), squares], dim=-1))
        scale = torch.rsqrt(both[..., -1:] / (self.inner * tp.world_size()) + self.norm.eps)
        return (both[..., :-1] * scale).to(dtype)
