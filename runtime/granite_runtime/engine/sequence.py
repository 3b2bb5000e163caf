"""One request's life in the engine: its tokens, its slot, and what has been streamed."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch

from granite_runtime.engine.sampling import SamplingParams

_ids = itertools.count()


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class TokenEvent:
    """What the engine reports after each step for one sequence."""

    text: str  # new text safe to show (stop strings and partial UTF-8 held back)
    token_ids: list[int]
    logprobs: list[tuple[float, dict[int, float]]]
    finish_reason: str | None = None  # "stop", "length", "cancelled", "error"
    error: str | None = None


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    on_event: Callable[[Sequence, TokenEvent], None] | None = None
    id: int = field(default_factory=lambda: next(_ids))
    status: Status = Status.WAITING
    slot: int = -1
    prefilled: int = 0  # prompt tokens already run through the model
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[float, dict[int, float]]] = field(default_factory=list)
    text: str = ""  # decoded output so far (after stop-string truncation)
    emitted: int = 0  # characters of `text` already reported
    # the output decoded up to a settled token (engine/output.py decodes only what follows)
    settled_ids: int = 0
    settled_text: str = ""
    finish_reason: str | None = None
    # what its last token ends it with (end of text, length), until that token is reported
    ending: str | None = None
    cancelled: bool = False
    arrival: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    generator: torch.Generator | None = None
    matcher: object | None = None  # llguidance.LLMatcher of params.grammar, set at submit

    def __post_init__(self) -> None:
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    @property
    def length(self) -> int:
        """Tokens whose state is in the cache (prompt run so far plus generated tokens)."""
        return self.prefilled + max(0, len(self.output_ids) - 1)

    @property
    def in_prefill(self) -> bool:
        return self.prefilled < len(self.prompt_ids)

    def cancel(self) -> None:
        """Called from any thread (a client went away); the engine frees it next step."""
        self.cancelled = True
