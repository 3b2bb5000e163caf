"""The official `openai` client against a real `gkit serve` on the demo model."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest
from openai import OpenAI

from tests.server_process import ServerProcess

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(tiny_hybrid):
    proc = ServerProcess(tiny_hybrid, "--max-num-seqs", "8", "--max-model-len", "256", api_key=KEY)
    yield proc
    proc.stop()


@pytest.fixture
def client(server) -> OpenAI:
    return OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0)


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-hybrid"]


def test_completion_with_text_prompt_and_logprobs(client):
    r = client.completions.create(
        model="tiny-hybrid",
        prompt="The weather in Boston is",
        max_tokens=12,
        temperature=0,
        logprobs=3,
        extra_body={"ignore_eos": True},
    )
    choice = r.choices[0]
    assert r.usage.completion_tokens == 12 and choice.finish_reason == "length"
    assert len(choice.logprobs.token_logprobs) == 12
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    assert all(len(top) == 3 for top in choice.logprobs.top_logprobs)
    again = client.completions.create(
        model="tiny-hybrid",
        prompt="The weather in Boston is",
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert again.choices[0].text == choice.text  # greedy is deterministic


def test_token_id_prompt_equals_text_prompt(client, tiny_hybrid):
    from granite_runtime.engine.tokenizer import TextCodec

    ids = TextCodec.from_dir(tiny_hybrid).encode("Hello, world")
    by_ids = client.completions.create(
        model="tiny-hybrid",
        prompt=ids,
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    by_text = client.completions.create(
        model="tiny-hybrid",
        prompt="Hello, world",
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert by_ids.usage.prompt_tokens == len(ids)
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_seeded_sampling_is_reproducible(client):
    def run(seed):
        return (
            client.completions.create(
                model="tiny-hybrid",
                prompt="Once",
                max_tokens=16,
                temperature=1.0,
                top_p=0.9,
                seed=seed,
                extra_body={"ignore_eos": True},
            )
            .choices[0]
            .text
        )

    assert run(7) == run(7)
    assert len({run(s) for s in range(4)}) > 1


def test_chat_completion_and_usage(client):
    r = client.chat.completions.create(
        model="tiny-hybrid", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
    )
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens > 5 and 1 <= r.usage.completion_tokens <= 10


def test_chat_streaming_matches_non_streaming(client):
    kwargs = dict(
        model="tiny-hybrid",
        max_tokens=20,
        temperature=0,
        messages=[{"role": "user", "content": "Tell me a story"}],
        extra_body={"ignore_eos": True},
    )
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].usage.completion_tokens == 20
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_completion_streaming(client):
    parts = list(
        client.completions.create(
            model="tiny-hybrid",
            prompt="Count:",
            max_tokens=9,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert parts[-1].choices[0].finish_reason == "length"
    whole = client.completions.create(
        model="tiny-hybrid",
        prompt="Count:",
        max_tokens=9,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text


def test_stop_string_truncates(client):
    base = client.completions.create(
        model="tiny-hybrid",
        prompt="abc",
        max_tokens=30,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    text = base.choices[0].text
    stop = text[10:13]
    assert len(stop) == 3
    cut = client.completions.create(
        model="tiny-hybrid",
        prompt="abc",
        max_tokens=30,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "kwargs,status,code",
    [
        ({"model": "granite-99"}, 404, "model_not_found"),
        ({"model": "tiny-hybrid", "max_tokens": 0}, 400, "invalid_value"),
        ({"model": "tiny-hybrid", "temperature": 5}, 400, "invalid_value"),
        ({"model": "tiny-hybrid", "frequency_penalty": 1.0}, 400, "unsupported_parameter"),
        ({"model": "tiny-hybrid", "response_format": {"type": "xml"}}, 400, "unsupported_value"),
    ],
)
def test_errors_in_openai_shape(client, kwargs, status, code):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(messages=[{"role": "user", "content": "x"}], **kwargs)
    assert caught.value.status_code == status
    assert caught.value.body["code"] == code and caught.value.body["message"]


def test_oversized_prompt_is_413(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model="tiny-hybrid", prompt=[3] * 300, max_tokens=1)
    assert caught.value.status_code == 413
    assert "256 tokens" in caught.value.body["message"]


def test_wrong_api_key_is_401(server):
    bad = OpenAI(base_url=server.base + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.status_code == 401


def _post(server, path: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(
        server.base + path,
        data=data,
        method="POST",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'{"prompt": "x",', "is not valid JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),  # the parser's recursion
        (b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}", "integer string conversion"),
    ],
    ids=["truncated", "deep", "long-number"],
)
def test_malformed_json_is_400(server, data, says):
    status, body = _post(server, "/v1/completions", data)
    assert status == 400 and body["error"]["code"] == "invalid_json"
    assert says in body["error"]["message"]


def test_unknown_route_is_404_in_openai_shape(server):
    status, body = _post(server, "/v1/embeddings", b"{}")
    assert status == 404 and body["error"]["type"] == "not_found_error"


def _counted(text: str, endpoint: str, status: str) -> float:
    label = f'gkit_requests_total{{endpoint="{endpoint}",status="{status}"}}'
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(label))


def test_health_and_metrics(server, client):
    with urllib.request.urlopen(server.base + "/metrics") as r:
        before = r.read().decode()
    client.completions.create(model="tiny-hybrid", prompt="x", max_tokens=2)
    streamed = client.completions.create(model="tiny-hybrid", prompt="x", max_tokens=2, stream=True)
    assert len(list(streamed)) >= 1
    assert _post(server, "/v1/embeddings", b"{}")[0] == 404
    with urllib.request.urlopen(server.base + "/health") as r:
        assert json.loads(r.read()) == {"status": "ok"}
    with urllib.request.urlopen(server.base + "/metrics") as r:
        text = r.read().decode()
    for name in (
        "gkit_requests_total",
        "gkit_prompt_tokens_total",
        "gkit_queue_length",
        "gkit_time_to_first_token_seconds_count",
        "gkit_cache_usage_ratio",
    ):
        assert name in text
    line = next(ln for ln in text.splitlines() if ln.startswith("gkit_generation_tokens_total"))
    assert float(line.split()[-1]) >= 2
    # requests counted by endpoint and status, streamed ones too, unknown paths as "other"
    grew = {
        key: _counted(text, *key) - _counted(before, *key)
        for key in (("/v1/completions", "200"), ("other", "404"))
    }
    assert grew == {("/v1/completions", "200"): 2.0, ("other", "404"): 1.0}


def test_the_relay_delivers_a_steps_events_in_order_with_one_wakeup():
    """Events put from the engine thread reach each stream's queue in order; a burst (one
    step's tokens for every stream) wakes the event loop once, not once per event."""
    import asyncio
    import threading

    from granite_runtime.server.relay import EventRelay

    async def run():
        loop = asyncio.get_running_loop()
        relay, queues = EventRelay(loop), [asyncio.Queue() for _ in range(64)]
        wakeups = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakeups.append(1), real(*a))

        def engine_step(step: int) -> None:
            for q in queues:
                relay.put(q, step)

        # the loop is held (join blocks it) while three steps' events come in, as when it
        # is busy writing: they wait in the relay, and one drain delivers them all
        thread = threading.Thread(target=lambda: [engine_step(s) for s in range(3)])
        thread.start()
        thread.join()
        await asyncio.sleep(0.01)
        got = [[q.get_nowait() for _ in range(q.qsize())] for q in queues]
        return got, len(wakeups)

    got, wakeups = asyncio.run(run())
    assert got == [[0, 1, 2]] * 64
    assert wakeups == 1
