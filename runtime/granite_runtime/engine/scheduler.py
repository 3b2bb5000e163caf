"""Which sequences a step runs: every running stream's next token, then prompt chunks.

The token budget (`max_num_batched_tokens`, as vLLM's scheduler has) counts each decoding
stream's token first; what is left goes to prompt chunks, at least MIN_PREFILL_TOKENS so
prompts never starve, several prompts in one step if they fit.
"""

from __future__ import annotations

from granite_runtime.engine.sequence import Sequence

MIN_PREFILL_TOKENS = 64


def decoding(running: list[Sequence]) -> list[Sequence]:
    """The streams whose next token this step computes: prompt done, and not ending (their
    last token already finishes them; it is reported while the next step runs)."""
    return [s for s in running if not s.in_prefill and s.output_ids and s.ending is None]


def chunks(running: list[Sequence], budget: int, largest: int) -> list[tuple[Sequence, list[int]]]:
    """The prompt chunks this step runs, in admission order, within `budget` tokens (at
    least MIN_PREFILL_TOKENS) and at most `largest` (the prefill chunk) each.

    A chunk that is not its prompt's last is cut to a multiple of MIN_PREFILL_TOKENS:
    Triton specialises integer arguments by divisibility by 16, so those lengths share the
    compiled kernels of the lengths warmed up at start-up, where a budget minus however many
    streams decode (505, 498, ...) would need variants of its own. A multiple rather than a
    power of two, because an eager chunk costs ~25 ms of host time on an H100 whatever its
    length (bench/NOTES.md, the packed-step round): 448 tokens as one part, not as
    256 + 128 + 64."""
    out, budget = [], max(budget, MIN_PREFILL_TOKENS)
    for seq in [s for s in running if s.in_prefill]:
        left = len(seq.prompt_ids) - seq.prefilled
        take = min(budget, largest, left)
        if take < left and take < largest:
            if take < MIN_PREFILL_TOKENS:
                break  # what is left of the budget waits for the next step
            take -= take % MIN_PREFILL_TOKENS
        out.append((seq, seq.prompt_ids[seq.prefilled : seq.prefilled + take]))
        budget -= take
    return out
