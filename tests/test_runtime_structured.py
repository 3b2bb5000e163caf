"""Structured output through the official openai client against a real `gkit serve`.

The demo model has random weights: unconstrained, it never writes valid JSON, so every
parsed answer here is the grammar's doing (llguidance masks applied before sampling).
"""

from __future__ import annotations

import json
import subprocess

import jsonschema
import openai
import pydantic
import pytest

from tests.conftest import run_gkit
from tests.server_process import ServerProcess

PET = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog", "parrot"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "name": {"type": "string", "maxLength": 12},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "owner": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9999}},
            "required": ["id"],
            "additionalProperties": False,
        },
    },
    "required": ["kind", "age", "name", "tags", "owner"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
MESSAGES = [{"role": "user", "content": "Describe a pet."}]


@pytest.fixture(scope="module")
def client(tiny_hybrid):
    server = ServerProcess(tiny_hybrid, "--max-num-seqs", "4", "--max-model-len", "1024")
    yield openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
    server.stop()


def _pet_format(strict: bool = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET, "strict": strict}}


def test_json_schema_holds_on_20_seeds_at_temperature_1(client):
    for seed in range(20):
        r = client.chat.completions.create(
            model="tiny-hybrid",
            messages=MESSAGES,
            temperature=1.0,
            seed=seed,
            max_tokens=400,
            response_format=_pet_format(),
        )
        choice = r.choices[0]
        assert choice.finish_reason == "stop", (seed, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), PET)


def test_without_a_schema_the_random_model_writes_no_json(client):
    r = client.chat.completions.create(
        model="tiny-hybrid", messages=MESSAGES, temperature=1.0, seed=0, max_tokens=60
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.choices[0].message.content or "")


def test_json_object_gives_an_object(client):
    parsed = []
    for seed in range(6):
        r = client.chat.completions.create(
            model="tiny-hybrid",
            messages=MESSAGES,
            temperature=1.0,
            seed=seed,
            max_tokens=300,
            response_format={"type": "json_object"},
        )
        text = r.choices[0].message.content
        assert text.startswith("{")
        if r.choices[0].finish_reason == "stop":
            parsed.append(json.loads(text))
    # random weights may fill a string until max_tokens; every finished one is an object
    assert parsed and all(isinstance(p, dict) for p in parsed)


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_time"}}]
)
def test_forced_tool_calls_have_arguments_that_validate(client, choice):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for seed in range(5):
        r = client.chat.completions.create(
            model="tiny-hybrid",
            messages=[{"role": "user", "content": "What is the weather?"}],
            tools=[WEATHER, TIME],
            tool_choice=choice,
            temperature=1.0,
            seed=seed,
            max_tokens=300,
        )
        message = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls", message
        assert message.tool_calls, message
        for call in message.tool_calls:
            if isinstance(choice, dict):
                assert call.function.name == "get_time"
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_auto_with_a_strict_tool_gives_text_or_a_call_that_validates(client):
    strict = {"type": "function", "function": {**TIME["function"], "strict": True}}
    kinds = set()
    for seed in range(8):
        r = client.chat.completions.create(
            model="tiny-hybrid",
            messages=[{"role": "user", "content": "Time?"}],
            tools=[strict],
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        )
        message = r.choices[0].message
        if r.choices[0].finish_reason == "length":
            continue  # cut off mid-answer: nothing to check but that it obeyed so far
        if message.tool_calls:
            kinds.add("call")
            for call in message.tool_calls:
                assert json.loads(call.function.arguments)["zone"] in ("UTC", "CET")
        else:
            kinds.add("text")
            assert not (message.content or "").startswith("<")
    assert kinds  # what the random model picks varies; each answer obeys the grammar


def test_one_call_when_parallel_tool_calls_is_false(client):
    r = client.chat.completions.create(
        model="tiny-hybrid",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=1.0,
        seed=3,
        max_tokens=300,
    )
    assert len(r.choices[0].message.tool_calls) == 1


def test_streaming_gives_the_same_json_as_not_streaming(client):
    args = dict(
        model="tiny-hybrid",
        messages=MESSAGES,
        temperature=1.0,
        seed=11,
        max_tokens=400,
        response_format=_pet_format(),
    )
    whole = client.chat.completions.create(**args).choices[0].message.content
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**args, stream=True)
        if chunk.choices
    ]
    assert "".join(pieces) == whole and len(pieces) > 3
    jsonschema.validate(json.loads(whole), PET)


def test_streamed_forced_tool_call_arrives_as_a_tool_call_delta(client):
    chunks = list(
        client.chat.completions.create(
            model="tiny-hybrid",
            messages=[{"role": "user", "content": "Time?"}],
            tools=[TIME],
            tool_choice="required",
            temperature=1.0,
            seed=2,
            max_tokens=200,
            stream=True,
        )
    )
    calls = [c for ch in chunks if ch.choices for c in (ch.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_time"
    assert json.loads(calls[0].function.arguments)["zone"] in ("UTC", "CET")
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


class Owner(pydantic.BaseModel):
    id: int = pydantic.Field(ge=1, le=99)


class Pet(pydantic.BaseModel):
    kind: str = pydantic.Field(max_length=8)
    age: int = pydantic.Field(ge=0, le=30)
    owner: Owner


def test_the_clients_parse_helper_returns_a_parsed_object(client):
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(
        model="tiny-hybrid",
        messages=MESSAGES,
        temperature=1.0,
        seed=5,
        max_tokens=300,
        response_format=Pet,
    )
    pet = r.choices[0].message.parsed
    assert isinstance(pet, Pet) and 0 <= pet.age <= 30 and 1 <= pet.owner.id <= 99


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"presence_penalty": 0.5}, "'presence_penalty' = 0.5 is not supported"),
        ({"logit_bias": {"1": 5}}, "'logit_bias'"),
        ({"extra_body": {"best_of": 3}}, "'best_of' = 3 is not supported"),
        ({"extra_body": {"guided_json": {}}}, "'guided_json' is not supported"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}},
                }
            },
            'Unimplemented keys: ["uniqueItems"]',
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {
                            "type": "object",
                            "properties": {"a": {"type": "string", "maxLenght": 3}},
                        },
                    },
                }
            },
            "'maxLenght' is not a JSON Schema keyword",
        ),
        ({"response_format": {"type": "yaml"}}, "'response_format.type' must be"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "names 'nope', which is not among the tools",
        ),
    ],
    ids=[
        "penalty",
        "logit_bias",
        "best_of",
        "unknown field",
        "unimplemented keyword",
        "misspelt keyword",
        "format type",
        "unknown function",
    ],
)
def test_unsupported_requests_are_a_400_naming_the_field(client, extra, words):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="tiny-hybrid", messages=MESSAGES, max_tokens=4, **extra
        )
    assert words in str(refused.value)


def test_completions_refuse_fields_they_do_not_implement(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="tiny-hybrid", prompt="a", max_tokens=2, suffix="b")
    assert "'suffix' = 'b' is not supported on /v1/completions" in str(refused.value)


def _generate(model, schema, *extra: str) -> subprocess.CompletedProcess:
    """The real `gkit generate --json-schema` on the CPU."""
    return run_gkit(
        "generate",
        str(model),
        "-p",
        "pet",
        "--json-schema",
        str(schema),
        "--device",
        "cpu",
        *extra,
    )


def test_generate_with_a_json_schema_file(tiny_hybrid, tmp_path):
    schema = tmp_path / "pet.json"
    schema.write_text(json.dumps(PET))
    r = _generate(
        tiny_hybrid, schema, "--temperature", "1", "--seed", "4", "--max-tokens", "400", "--json"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["finish_reason"] == "stop"
    jsonschema.validate(json.loads(out["text"]), PET)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "array", "contains": {"type": "integer"}}))
    r = _generate(tiny_hybrid, bad)
    assert r.returncode == 2 and 'Unimplemented keys: ["contains"]' in r.stderr
