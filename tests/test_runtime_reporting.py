"""The engine reports a step's tokens while the next step runs (engine/engine.py): the
order of launches and reports, and the token a late-found stop string makes it drop."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from granite_runtime.engine.engine import Engine
from granite_runtime.engine.sampling import SamplingParams
from granite_runtime.engine.tokenizer import TextCodec
from granite_runtime.model.loader import load_model


@pytest.fixture(scope="module")
def engine(tiny_hybrid):
    model, codec = load_model(tiny_hybrid, "float32", "cpu"), TextCodec.from_dir(tiny_hybrid)
    return Engine(model, codec, max_num_seqs=2, max_model_len=256)


def test_each_token_is_reported_after_the_next_step_is_launched(engine):
    seen = []
    forward = engine._forward

    def recording(*args, **kwargs):
        seen.append("launch")
        return forward(*args, **kwargs)

    engine._forward = recording
    try:
        params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
        seq = engine.submit([5, 6, 7], params, lambda s, ev: seen.append(len(ev.token_ids)))
        while engine.has_work():
            engine.step()
    finally:
        del engine._forward
    # the prompt, then four decode steps; each token's report follows the launch of the
    # step that consumes it, and the last one (no step follows) is reported on its own
    assert seen == ["launch", "launch", 1, "launch", 1, "launch", 1, "launch", 1, 1]
    assert len(seq.output_ids) == 5 and seq.finish_reason == "length"


def test_a_stop_string_found_late_drops_the_token_computed_meanwhile(engine):
    codec = engine.codec
    free = len(engine.free_slots)
    greedy = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    ids = engine.generate([9, 10, 11], greedy).output_ids
    text = codec.decode(ids)
    stop = text[12:15]
    assert len(stop) == 3 and text.find(stop) == 12
    # the first token whose text holds the stop string: the step after it was already
    # running when the report found it, and that step's token must not be kept
    k = next(n for n in range(1, len(ids) + 1) if stop in codec.decode(ids[:n]))
    assert k < len(ids)
    stopped = engine.generate(
        [9, 10, 11], SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True, stop=(stop,))
    )
    assert stopped.output_ids == ids[:k]
    assert stopped.finish_reason == "stop" and stopped.text == text[:12]
    assert engine.running == [] and len(engine.free_slots) == free
