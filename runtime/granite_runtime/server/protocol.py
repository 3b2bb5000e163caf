"""OpenAI request bodies in, engine inputs out; OpenAI response bodies back.

Validation is by hand rather than through pydantic models so every refusal is one sentence
naming the field, with status 400, in OpenAI's error shape (FastAPI's default would be 422).
"""

from __future__ import annotations

import time
import uuid

from granite_runtime.engine.sampling import SamplingParams
from granite_runtime.spec.errors import RequestError


def bounded_number(body: dict, key: str, default, low: float, high: float, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not isinstance(value, int))
    ):
        raise RequestError(
            f"'{key}' must be a {'whole ' if kind is int else ''}number.", code="invalid_value"
        )
    if not low <= value <= high:
        raise RequestError(
            f"'{key}' must be between {low} and {high}; got {value}.", code="invalid_value"
        )
    return kind(value)


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("'stop' must be a string or a list of non-empty strings.")
    return tuple(stops)


def sampling_params(
    body: dict, max_model_len: int, logprobs: int | None = None, grammar: str | None = None
) -> SamplingParams:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if bounded_number(body, "n", 1, 1, 1, int) != 1:
        raise RequestError("'n' must be 1.")
    return SamplingParams(
        temperature=bounded_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=bounded_number(body, "top_p", 1.0, 0.0, 1.0),
        top_k=bounded_number(body, "top_k", 0, 0, 1 << 20, int),
        seed=bounded_number(body, "seed", None, -(1 << 63), (1 << 63) - 1, int),
        max_tokens=bounded_number(
            {"max_tokens": max_tokens}, "max_tokens", 16, 1, max_model_len, int
        ),
        stop=_stops(body),
        logprobs=logprobs,
        ignore_eos=bool(body.get("ignore_eos", False)),
        grammar=grammar,
    )


def prompts(body: dict, encode) -> list[list[int]]:
    """`prompt` as text, token ids, or a list of either: one token list per prompt."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [encode(prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [list(prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return [encode(p) for p in prompt]
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt)
    ):
        return [list(p) for p in prompt]
    raise RequestError(
        "'prompt' must be a string, a list of token ids, or a list of either.",
        code="invalid_prompt",
    )


def messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("'messages' must be a non-empty list.")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in {
            "system",
            "user",
            "assistant",
            "tool",
            "developer",
        }:
            raise RequestError(f"messages[{i}] needs a role of system, user, assistant or tool.")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({**m, "role": role, "content": content or ""})
    return out


def tools(body: dict) -> list[dict] | None:
    """The tools to offer, or None; tool_choice 'none' offers none."""
    offered = body.get("tools")
    choice = body.get("tool_choice", "auto")
    if offered is None:
        return None
    if not isinstance(offered, list) or not all(
        isinstance(t, dict)
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
        for t in offered
    ):
        raise RequestError("'tools' must be a list of {type: function, function: {name, ...}}.")
    if choice == "none":
        return None
    return offered


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def envelope(kind: str, rid: str, model: str, choices: list, **extra) -> dict:
    return {
        "id": rid,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }


def error_body(message: str, code: str, status: int) -> dict:
    kind = {
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
        503: "service_unavailable",
    }.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
