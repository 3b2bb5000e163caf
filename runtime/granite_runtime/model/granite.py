"""The Granite 4.0 decoder stack (hybrid Mamba-2/attention, dense or MoE) for inference."""

from __future__ import annotations

import torch
from torch import nn

from granite_runtime.engine.batch import Batch
from granite_runtime.engine.cache import HybridCache
from granite_runtime.kernels.choice import PYTORCH, KernelChoice
from granite_runtime.layers.attention import Attention
from granite_runtime.layers.linear import one_row_fused
from granite_runtime.layers.mamba2 import Mamba2
from granite_runtime.layers.moe import MoE, SwiGLU
from granite_runtime.layers.norm import RMSNorm
from granite_runtime.parallel import tp
from granite_runtime.spec.config import GraniteConfig


class DecoderLayer(nn.Module):
    kernels: KernelChoice = PYTORCH

    def __init__(self, config: GraniteConfig, index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_mamba = config.layer_types[index] == "mamba"
        if self.is_mamba:
            self.mamba = Mamba2(config, index)
        else:
            self.self_attn = Attention(config, index)
        self.shared_mlp = SwiGLU(config.hidden_size, config.shared_size)
        self.block_sparse_moe = MoE(config) if config.num_experts > 0 else None
        self.residual_multiplier = config.residual_multiplier

    def forward(
        self, x: torch.Tensor, delta: torch.Tensor | None, batch: Batch, cache: HybridCache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream entering this layer is x + r * delta (delta None for the
        first layer); the same holds for the (x, delta) it returns. Leaving each add to
        the norm that follows lets the two run as one kernel (RMSNorm.add_forward)."""
        mixer = self.mamba if self.is_mamba else self.self_attn
        r = self.residual_multiplier
        norm = self.input_layernorm
        if (weights := mixer.fused_input(x, cache)) is not None:  # the norm in the product
            x, proj = self.kernels.ops.fused_linear.norm_linear(
                x, delta, r, norm.weight, norm.eps, *weights, launch=self.kernels.launch
            )
            mixed = mixer.from_projection(proj.view(*x.shape[:-1], -1), batch, cache)
        else:
            if delta is None:
                h = norm(x)
            else:
                x, h = norm.add_forward(x, delta, r)
            # Under tensor parallelism each rank holds a partial sum of the mixer's and the
            # MLPs' outputs (row-parallel projections); one all-reduce each completes them.
            mixed = mixer(h, batch, cache)
            if not getattr(mixer, "reduces_output", False):  # Mamba may have summed it
                mixed = tp.all_reduce(mixed)
        if (fused := self._one_row_mlp(x, mixed)) is not None:
            return fused
        x, h = self.post_attention_layernorm.add_forward(x, mixed, r)
        out = self.shared_mlp(h)
        if self.block_sparse_moe is not None:
            out = out + self.block_sparse_moe(h)
        return x, tp.all_reduce(out)

    def _one_row_mlp(self, x, mixed) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(x, MLP output) for one token in 2-3 kernels (kernels/triton fused_linear, moe):
        the residual add and norm inside the shared MLP's input product (stacked with the
        router for MoE), SiLU * up inside the output product or the experts' down kernel.
        None where that path does not apply."""
        shared, moe = self.shared_mlp, self.block_sparse_moe
        norm, r = self.post_attention_layernorm, self.residual_multiplier
        inputs = [shared.input_linear, shared.output_linear]
        if moe is not None:
            inputs.append(moe.router.layer)
            if not moe.reads_experts_in_place(x):
                return None
        if not one_row_fused(self.kernels, x, *inputs):
            return None
        fl, launch = self.kernels.ops.fused_linear, self.kernels.launch
        if moe is None:
            x, gate_up = fl.norm_linear(
                x, mixed, r, norm.weight, norm.eps, shared.input_linear.weight, launch=launch
            )
            return x, fl.silu_mul_linear(gate_up, shared.output_linear.weight, launch=launch)
        x, logits_gate_up, h = fl.norm_linear(
            x, mixed, r, norm.weight, norm.eps, moe.router.layer.weight,
            shared.input_linear.weight, keep_normed=True, launch=launch,
        )  # fmt: skip
        out = self.kernels.ops.moe.moe_decode_routed(
            h, logits_gate_up.view(1, -1), moe.router.layer.out_features, moe.top_k,
            moe.input_linear.weight, moe.output_linear.weight, shared.output_linear.weight,
            launch=launch,
        )  # fmt: skip
        return x, out.view(x.shape)


class GraniteModel(nn.Module):
    def __init__(self, config: GraniteConfig):
        super().__init__()
        # under tensor parallelism each rank holds 1/tp_size of the vocabulary
        self.embed_tokens = nn.Embedding(config.vocab_size // config.tp_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class GraniteForCausalLM(nn.Module):
    kernels: KernelChoice = PYTORCH  # what kernels.select.apply gave every layer

    def __init__(self, config: GraniteConfig):
        super().__init__()
        self.config = config
        self.model = GraniteModel(config)
        self.lm_head = nn.Linear(
            config.hidden_size, config.vocab_size // config.tp_size, bias=False
        )

    def forward(
        self, tokens: torch.Tensor, batch: Batch, cache: HybridCache, all_logits: bool = False
    ) -> torch.Tensor:
        """Logits (fp32) for every position if `all_logits`, else (rows, 1, vocab) for each
        row's last token (of a packed batch too: engine/batch.py)."""
        x = tp.embed(self.model.embed_tokens, tokens) * self.config.embedding_multiplier
        delta = None
        for layer in self.model.layers:
            x, delta = layer(x, delta, batch, cache)
        if not all_logits:
            x, delta = batch.last_tokens(x), batch.last_tokens(delta)
        # the lm_head (200-400 MB) stays on the GEMV's measured choice: one call a step
        _, x = self.model.norm.add_forward(x, delta, self.config.residual_multiplier)
        return tp.gather_logits(self.lm_head(x)).float() / self.config.logits_scaling
