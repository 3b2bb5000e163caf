"""Tool calling: Granite's <tool_call> blocks to OpenAI tool_calls, and the chat template.

Random weights emit no tool calls, so the parser and the template are driven directly.
"""

from __future__ import annotations

import json

import pytest

from granite_runtime.engine.tokenizer import TextCodec
from granite_runtime.server.tool_calls import ToolCallStream, parse_tool_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
OUTPUT = (
    'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Boston"}}\n'
    '</tool_call><tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    "</tool_call>"
)


def test_parse_two_calls_and_content():
    content, calls = parse_tool_calls(OUTPUT)
    assert content == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": "Boston"},
        {"city": "Paris"},
    ]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert calls[0]["id"] != calls[1]["id"]


def test_plain_text_is_content_only():
    assert parse_tool_calls("no tools here") == ("no tools here", [])


@pytest.mark.parametrize(
    "block",
    ["{not json}", '{"name": "f", "arguments": {"x": ' + "9" * 5000 + "}}", "[" * 100_000],
    ids=["not-json", "long-number", "deep"],
)
def test_invalid_json_in_a_block_stays_content(block):
    """What the model writes is not trusted: a block that is not JSON, or JSON Python will
    not read (a number past its digit limit, nesting past its recursion limit), stays text."""
    content, calls = parse_tool_calls(f"<tool_call>{block}</tool_call>")
    assert calls == [] and content == f"<tool_call>{block}</tool_call>"


def test_unterminated_block_with_whole_json_is_a_call():
    content, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}')
    assert content is None and calls[0]["function"]["arguments"] == '{"x": 1}'


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11])
def test_streaming_any_split_gives_the_same_events_and_no_partial_tags(size):
    stream = ToolCallStream()
    events = []
    for i in range(0, len(OUTPUT), size):
        events += stream.feed(OUTPUT[i : i + size])
    events += stream.finish()
    text = "".join(v for k, v in events if k == "content")
    assert text == "Let me check."
    assert "<" not in text
    calls = [v for k, v in events if k == "tool_call"]
    assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["Boston", "Paris"]


def test_template_lists_tools_and_returns_tool_results(tiny_hybrid):
    codec = TextCodec.from_dir(tiny_hybrid)
    messages = [
        {"role": "user", "content": "Weather in Boston?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Boston"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    text = codec.render_chat(messages, tools=[WEATHER])
    system = text.split("<|end_of_text|>")[0]
    assert system.startswith("<|start_of_role|>system<|end_of_role|>")
    assert "<tools>" in system and json.dumps(WEATHER, sort_keys=True) in system
    assert (
        '<|start_of_role|>assistant<|end_of_role|><tool_call>\n{"name": "get_weather", '
        '"arguments": {"city": "Boston"}}\n</tool_call><|end_of_text|>'
    ) in text
    assert (
        '<|start_of_role|>tool<|end_of_role|><tool_response>\n{"temp": 21}\n'
        "</tool_response><|end_of_text|>"
    ) in text
    assert text.endswith("<|start_of_role|>assistant<|end_of_role|>")
    # What the model would answer parses back into the same call.
    _, calls = parse_tool_calls(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Boston"}}\n</tool_call>'
    )
    assert calls[0]["function"]["name"] == "get_weather"


def test_template_is_sandboxed(tiny_hybrid):
    from granite_runtime.spec.errors import RequestError

    codec = TextCodec.from_dir(tiny_hybrid)
    codec.chat_template = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(RequestError, match="chat template"):
        codec.render_chat([{"role": "user", "content": "x"}])


def test_server_returns_tool_calls_from_model_output(tiny_hybrid, monkeypatch):
    """The chat endpoint's tool path. The decoder is replaced by a named fake that returns
    a tool call, since random weights cannot produce one."""
    from fastapi.testclient import TestClient

    from granite_runtime.server.app import create_app
    from granite_runtime.server.run import build_service

    service = build_service(tiny_hybrid, "cpu", "float32", 2, 256)
    monkeypatch.setattr(service.engine.codec, "decode", lambda ids: OUTPUT)
    body = {
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [WEATHER],
        "max_tokens": 1,
        "ignore_eos": True,
    }
    with TestClient(create_app(service)) as http:
        r = http.post("/v1/chat/completions", json=body)
        streamed = http.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    assert [json.loads(c["function"]["arguments"]) for c in choice["message"]["tool_calls"]] == [
        {"city": "Boston"},
        {"city": "Paris"},
    ]
    chunks = [
        json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    streamed_calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [c["index"] for c in streamed_calls] == [0, 1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert "".join(d.get("content") or "" for d in deltas) == "Let me check."
