"""What a request asks of the output's shape, and which request fields gkit honours.

`response_format` (json_object, json_schema) and `tool_choice` (required, a named function,
or auto with `strict` tools) become one llguidance grammar for the sequence. Every field a
request may carry is listed here; any other, or a listed one at a value gkit does not
implement, is a 400 naming it: nothing a client asks for is silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable

from granite_runtime.spec.errors import RequestError

SAMPLING = {"temperature", "top_p", "top_k", "seed", "max_tokens", "stop", "ignore_eos"}
COMMON = SAMPLING | {"model", "stream", "stream_options", "n"}
CHAT_FIELDS = COMMON | {
    "messages",
    "max_completion_tokens",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
}
COMPLETION_FIELDS = COMMON | {"prompt", "logprobs"}
# Accepted only at the value that means "not used".
NEUTRAL = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": (None, {}),
    "top_logprobs": (None, 0),
    "echo": (False,),
    "best_of": (None, 1),
    "suffix": (None,),
    "store": (False, None),
}


def check_fields(body: dict, allowed: set[str], endpoint: str) -> None:
    for key, value in body.items():
        if key in allowed or value in NEUTRAL.get(key, ()):
            continue
        what = f"'{key}'" if key not in NEUTRAL else f"'{key}' = {value!r}"
        raise RequestError(
            f"{what} is not supported on {endpoint} by this server (gkit); remove it.",
            code="unsupported_parameter",
        )


def response_schema(body: dict) -> dict | None:
    """The JSON schema `response_format` asks for, or None for free text."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise RequestError("'response_format.json_schema.schema' must be a JSON schema object.")
        if not isinstance(spec.get("strict", False), bool):
            raise RequestError("'response_format.json_schema.strict' must be true or false.")
        return spec["schema"]
    raise RequestError(
        "'response_format.type' must be text, json_object or json_schema.",
        code="unsupported_value",
    )


def _functions(offered: list[dict]) -> list[dict]:
    out = []
    for i, tool in enumerate(offered):
        fn = tool["function"]
        if tool.get("type", "function") != "function":
            raise RequestError(f"'tools[{i}].type' must be function.", code="unsupported_value")
        if not isinstance(fn.get("parameters", {}), dict):
            raise RequestError(f"'tools[{i}].function.parameters' must be a JSON schema object.")
        if not isinstance(fn.get("strict", False), bool):
            raise RequestError(f"'tools[{i}].function.strict' must be true or false.")
        out.append(fn)
    return out


def forced_function(choice, offered: list[dict]) -> dict | None:
    """The function a named tool_choice forces, checked against the offered tools."""
    if not isinstance(choice, dict):
        return None
    name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
    if not isinstance(name, str):
        raise RequestError(
            "'tool_choice' must be auto, none, required or {type: function, function: {name}}.",
            code="unsupported_value",
        )
    for fn in _functions(offered):
        if fn["name"] == name:
            return fn
    raise RequestError(f"'tool_choice' names '{name}', which is not among the tools.")


def grammar(body: dict, offered: list[dict] | None, compiler: Callable) -> str | None:
    """The one grammar this chat request's output must follow, or None.

    `compiler()` gives the engine's GrammarCompiler (built on first use)."""
    schema = response_schema(body)
    choice = body.get("tool_choice", "auto")
    if choice not in ("auto", "none", "required") and not isinstance(choice, dict):
        raise RequestError("'tool_choice' must be auto, none, required or a named function.")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise RequestError("'parallel_tool_calls' must be true or false.")
    if (choice == "required" or isinstance(choice, dict)) and not offered:
        raise RequestError(f"'tool_choice' {choice!r} needs 'tools'.")
    forcing = offered and (choice == "required" or isinstance(choice, dict))
    if schema is not None and forcing:
        raise RequestError(
            "'response_format' and a forced 'tool_choice' cannot both shape one answer.",
            code="unsupported_value",
        )
    if schema is not None:
        return compiler().json_schema(schema)
    if not offered or choice == "none":
        return None
    functions = _functions(offered)
    if isinstance(choice, dict):
        return compiler().tool_calls([forced_function(choice, offered)], True, parallel)
    if choice == "required":
        return compiler().tool_calls(functions, True, parallel)
    if any(fn.get("strict") for fn in functions):
        return compiler().tool_calls(functions, False, parallel)
    return None
