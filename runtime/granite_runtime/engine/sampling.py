"""Turning logits into the next token: greedy, temperature, top-k, top-p, per-request seeds."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    ignore_eos: bool = False
    grammar: str | None = None  # llguidance grammar every token must keep satisfiable

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1


def _filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    logits = logits / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        drop = probs.cumsum(-1) - probs > params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """One token per row of `logits` (B, V), each row with its own parameters."""
    out = logits.argmax(dim=-1).tolist()
    # rows are indexed only where they are sampled: iterating the tensor would make a view
    # per row, every step, for greedy rows too (64 of them at 64 streams)
    for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if not p.greedy:
            probs = torch.softmax(_filter(logits[row].float(), p), dim=-1)
            out[row] = int(torch.multinomial(probs.cpu(), 1, generator=gen))
    return out


def top_logprobs(logits: torch.Tensor, token: int, n: int) -> tuple[float, dict[int, float]]:
    """The chosen token's log-probability and the n most likely alternatives."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    values, ids = torch.topk(logp, n) if n > 0 else (logp[:0], logp[:0].long())
    return float(logp[token]), {int(i): float(v) for i, v in zip(ids, values, strict=True)}
