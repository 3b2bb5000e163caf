"""What a sequence's output reads as after each token: its finish reason, and the text that
is safe to stream (stop strings cut, partial characters held back), decoded incrementally."""

from __future__ import annotations

from granite_runtime.engine.sequence import Sequence
from granite_runtime.engine.tokenizer import TextCodec

SETTLE_TOKENS = 16


def ends_with_eos(seq: Sequence, stop_ids: set[int]) -> bool:
    return not seq.params.ignore_eos and seq.output_ids[-1] in stop_ids


def finish_reason(seq: Sequence, stop_ids: set[int], max_model_len: int) -> str | None:
    if ends_with_eos(seq, stop_ids):
        return "stop"
    if seq.matcher is not None and seq.matcher.is_stopped():
        return "stop"  # the grammar is complete: nothing may follow
    if len(seq.output_ids) >= seq.params.max_tokens:
        return "length"
    if len(seq.prompt_ids) + len(seq.output_ids) >= max_model_len:
        return "length"
    return None


def next_text(seq: Sequence, codec: TextCodec, reason: str | None) -> tuple[str, str | None]:
    """(the new text to stream, the finish reason, "stop" where a stop string appeared),
    after updating the sequence's text and how much of it has been streamed."""
    ids = seq.output_ids[:-1] if ends_with_eos(seq, codec.stop_token_ids) else seq.output_ids
    text = decoded(seq, codec, ids)
    hold = 0
    for stop in seq.params.stop:
        cut = text.find(stop)
        if cut >= 0:
            text, reason = text[:cut], "stop"
            break
        hold = max(hold, len(stop) - 1)
    if reason is None:
        # Hold back what may be the start of a stop string or an unfinished character.
        safe = len(text) - hold
        while safe > seq.emitted and text[safe - 1] == "\ufffd":
            safe -= 1
    else:
        safe = len(text)
    safe = max(safe, seq.emitted)
    seq.text = text
    delta, seq.emitted = text[seq.emitted : safe], safe
    return delta, reason


def decoded(seq: Sequence, codec: TextCodec, ids: list[int]) -> str:
    """The text of `ids`, decoding only the tokens after the last settled point: decoding
    the whole output at every token cost O(length) per token, for every stream, in the
    step's own thread. A point settles every SETTLE_TOKENS tokens where the text does not
    end in U+FFFD (a character cut in two, which the next token may complete)."""
    if not codec.concatenates:
        return codec.decode(ids)
    tail = codec.decode(ids[seq.settled_ids :])
    text = seq.settled_text + tail
    if len(ids) - seq.settled_ids >= SETTLE_TOKENS and not tail.endswith("\ufffd"):
        seq.settled_ids, seq.settled_text = len(ids), text
    return text
