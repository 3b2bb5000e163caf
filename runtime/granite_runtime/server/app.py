"""The OpenAI-compatible HTTP server: /v1/models, /v1/completions, /v1/chat/completions,
/health and /metrics, over the engine running on its own thread.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from granite_runtime.engine.engine import Engine
from granite_runtime.engine.sequence import Sequence, TokenEvent
from granite_runtime.server import protocol as p
from granite_runtime.server import request_fields
from granite_runtime.server.metrics import Metrics, RequestCounter
from granite_runtime.server.relay import relay_for
from granite_runtime.server.tool_calls import ToolCallStream, parse_tool_calls
from granite_runtime.spec.errors import RequestError

# A step that has run this long is taken for a hung GPU (or engine): /health answers 503, so
# the liveness probe restarts the pod instead of leaving its streams waiting forever. A step
# on a GPU takes milliseconds (bench/NOTES.md); the margin is for a CPU's slow prompt chunks
# (`gkit serve --stall-seconds`).
STALL_SECONDS = 120.0


@dataclass
class Service:
    engine: Engine
    model_name: str
    api_key: str | None = None
    stall_seconds: float = STALL_SECONDS


async def _submit_and_stream(service: Service, metrics: Metrics, prompt_ids, params):
    """Submit now (so refusals become HTTP errors), then yield events as they come."""
    relay = relay_for(asyncio.get_running_loop())
    queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
    seq = service.engine.submit(prompt_ids, params, lambda s, ev: relay.put(queue, ev))
    metrics.prompt_tokens.inc(len(prompt_ids))

    async def events() -> AsyncIterator[tuple[Sequence, TokenEvent]]:
        first = True
        try:
            while True:
                event = await queue.get()
                if first and event.token_ids:
                    metrics.ttft.observe(seq.first_token_at - seq.arrival)
                    first = False
                metrics.generation_tokens.inc(len(event.token_ids))
                yield seq, event
                if event.finish_reason:
                    return
        finally:
            if seq.finish_reason is None:  # the client went away: free the slot
                seq.cancel()

    return seq, events()


class ClientGone(Exception):
    """The client of a non-streaming request disconnected before its answer was ready."""


async def _until_done(request: Request, runs) -> None:
    """Drain every run's events, checking twice a second that the client is still there
    (a non-streaming request is otherwise never told that nobody waits for it)."""

    async def drain(events) -> None:
        async for _ in events:
            pass

    pending = {asyncio.ensure_future(drain(events)) for _, events in runs}
    try:
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.5)
            if pending and await request.is_disconnected():
                raise ClientGone()
    finally:
        for task in pending:
            task.cancel()


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _check_auth(service: Service, request: Request) -> None:
    if not service.api_key:
        return
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), service.api_key.encode()):
        raise RequestError("invalid API key.", 401, "invalid_api_key")


MAX_BODY_BYTES = int(os.environ.get("GKIT_MAX_REQUEST_BYTES", 8 << 20))


async def _read_bounded(request: Request) -> bytes:
    """The body, refused (413) past MAX_BODY_BYTES before it is all in memory."""
    declared = request.headers.get("content-length", "")
    too_big = RequestError(
        f"the request body is over {MAX_BODY_BYTES:,} bytes (GKIT_MAX_REQUEST_BYTES).",
        413,
        "request_too_large",
    )
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _body(service: Service, request: Request) -> dict:
    _check_auth(service, request)
    try:
        body = json.loads(await _read_bounded(request))
    except (ValueError, RecursionError) as bad:  # ValueError: JSON, UTF-8 or a long number
        why = "nested too deeply" if isinstance(bad, RecursionError) else f"not valid JSON ({bad})"
        raise RequestError(f"the request body is {why}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if model is not None and model != service.model_name:
        raise RequestError(
            f"the model '{model}' does not exist; this server serves '{service.model_name}'.",
            404,
            "model_not_found",
        )
    return body


def _completion_logprobs(codec, seq: Sequence, offset: int = 0) -> dict:
    tokens = [codec.tokenizer.decode([t], skip_special_tokens=False) for t in seq.output_ids]
    offsets, pos = [], offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [lp for lp, _ in seq.logprobs],
        "top_logprobs": [
            {codec.tokenizer.decode([i], skip_special_tokens=False): v for i, v in top.items()}
            for _, top in seq.logprobs
        ],
        "text_offset": offsets,
    }


async def completions(service: Service, metrics: Metrics, request: Request) -> Response:
    body = await _body(service, request)
    request_fields.check_fields(body, request_fields.COMPLETION_FIELDS, "/v1/completions")
    engine, codec = service.engine, service.engine.codec
    logprobs = p.bounded_number(body, "logprobs", None, 0, 20, int)
    params = p.sampling_params(body, engine.max_model_len, logprobs)
    prompt_lists = await asyncio.to_thread(p.prompts, body, codec.encode)
    rid = p.new_id("cmpl")
    if body.get("stream"):
        if len(prompt_lists) != 1:
            raise RequestError("streaming takes a single prompt.")
        seq, events = await _submit_and_stream(service, metrics, prompt_lists[0], params)

        async def stream():
            async for _, ev in events:
                lp = None
                if ev.logprobs and logprobs is not None:
                    lp = {"token_logprobs": [x for x, _ in ev.logprobs]}
                yield _sse(
                    p.envelope(
                        "text_completion",
                        rid,
                        service.model_name,
                        [
                            {
                                "index": 0,
                                "text": ev.text,
                                "logprobs": lp,
                                "finish_reason": ev.finish_reason,
                            }
                        ],
                    )
                )
            yield _sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")
    runs = []
    try:
        for ids in prompt_lists:
            runs.append(await _submit_and_stream(service, metrics, ids, params))
        await _until_done(request, runs)
    finally:  # a refusal partway, a failure or a client gone: none of them runs on
        for seq, _ in runs:
            if seq.finish_reason is None:
                seq.cancel()
    choices, completion_tokens = [], 0
    for index, (seq, _events) in enumerate(runs):
        _raise_if_failed(seq)
        completion_tokens += len(seq.output_ids)
        choices.append(
            {
                "index": index,
                "text": seq.text,
                "finish_reason": seq.finish_reason,
                "logprobs": _completion_logprobs(codec, seq) if logprobs is not None else None,
            }
        )
    usage = p.usage(sum(len(x) for x in prompt_lists), completion_tokens)
    return JSONResponse(
        p.envelope("text_completion", rid, service.model_name, choices, usage=usage)
    )


def _raise_if_failed(seq: Sequence) -> None:
    if seq.finish_reason == "error":
        raise RequestError(
            "the engine failed while generating; see the server log.", 500, "internal_error"
        )


async def chat_completions(service: Service, metrics: Metrics, request: Request) -> Response:
    body = await _body(service, request)
    request_fields.check_fields(body, request_fields.CHAT_FIELDS, "/v1/chat/completions")
    engine, codec = service.engine, service.engine.codec
    if body.get("logprobs"):
        raise RequestError(
            "logprobs are supported on /v1/completions, not on chat yet.", code="unsupported_value"
        )
    offered = p.tools(body)
    shape = await asyncio.to_thread(request_fields.grammar, body, offered, lambda: engine.grammars)
    # Rendering and tokenizing take time in proportion to the input: off the event loop,
    # so /health and the other streams never wait on one large request.
    prompt = await asyncio.to_thread(codec.render_chat, p.messages(body), offered)
    prompt_ids = await asyncio.to_thread(codec.encode, prompt)
    params = p.sampling_params(body, engine.max_model_len, grammar=shape)
    rid = p.new_id("chatcmpl")
    seq, events = await _submit_and_stream(service, metrics, prompt_ids, params)
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            _chat_stream(
                service, rid, seq, events, offered is not None, include_usage, len(prompt_ids)
            ),
            media_type="text/event-stream",
        )
    try:
        await _until_done(request, [(seq, events)])
    finally:
        if seq.finish_reason is None:
            seq.cancel()
    _raise_if_failed(seq)
    content, calls = parse_tool_calls(seq.text) if offered else (seq.text, [])
    message = {"role": "assistant", "content": content}
    reason = seq.finish_reason
    if calls:
        message["tool_calls"], reason = calls, "tool_calls"
    choice = {"index": 0, "message": message, "finish_reason": reason, "logprobs": None}
    return JSONResponse(
        p.envelope(
            "chat.completion",
            rid,
            service.model_name,
            [choice],
            usage=p.usage(len(prompt_ids), len(seq.output_ids)),
        )
    )


async def _chat_stream(
    service, rid, seq, events, parse_tools: bool, include_usage: bool, prompt_tokens: int
):
    def chunk(delta: dict, reason: str | None = None) -> str:
        return _sse(
            p.envelope(
                "chat.completion.chunk",
                rid,
                service.model_name,
                [{"index": 0, "delta": delta, "finish_reason": reason}],
            )
        )

    yield chunk({"role": "assistant", "content": ""})
    parser = ToolCallStream() if parse_tools else None
    calls = 0
    async for _, ev in events:
        parts = parser.feed(ev.text) if parser else [("content", ev.text)]
        if ev.finish_reason and parser:
            parts += parser.finish()
        for kind, value in parts:
            if kind == "content" and value:
                yield chunk({"content": value})
            elif kind == "tool_call":
                yield chunk({"tool_calls": [{"index": calls, **value}]})
                calls += 1
        if ev.finish_reason:
            yield chunk({}, "tool_calls" if calls else ev.finish_reason)
    if include_usage:
        yield _sse(
            p.envelope(
                "chat.completion.chunk",
                rid,
                service.model_name,
                [],
                usage=p.usage(prompt_tokens, len(seq.output_ids)),
            )
        )
    yield _sse("[DONE]")


def create_app(service: Service) -> FastAPI:
    metrics = Metrics(service.engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.engine.start()
        yield
        await asyncio.to_thread(service.engine.stop)

    app = FastAPI(title="gkit runtime", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service, app.state.metrics = service, metrics
    _routes(app, service, metrics)
    _error_handlers(app)
    return app


def _routes(app: FastAPI, service: Service, metrics: Metrics) -> None:
    known = {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions"}

    app.add_middleware(RequestCounter, metrics=metrics, known=known)

    @app.get("/health")
    async def health():
        if not service.engine.accepting:
            raise RequestError("shutting down.", 503, "service_unavailable")
        if (stalled := service.engine.stalled_for()) > service.stall_seconds:
            raise RequestError(
                f"the engine has been in one step for {stalled:.0f} s (the limit is "
                f"{service.stall_seconds:g} s): it is stalled.",
                503,
                "engine_stalled",
            )
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_endpoint():
        data, kind = metrics.render()
        return Response(data, media_type=kind)

    @app.get("/v1/models")
    async def models(request: Request):
        _check_auth(service, request)
        return {
            "object": "list",
            "data": [
                {
                    "id": service.model_name,
                    "object": "model",
                    "owned_by": "gkit",
                    "created": 0,
                    "max_model_len": service.engine.max_model_len,
                }
            ],
        }

    @app.post("/v1/completions")
    async def completions_endpoint(request: Request):
        return await completions(service, metrics, request)

    @app.post("/v1/chat/completions")
    async def chat_endpoint(request: Request):
        return await chat_completions(service, metrics, request)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError):
        return JSONResponse(p.error_body(error.message, error.code, error.status), error.status)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone):
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        code = "not_found" if error.status_code == 404 else "http_error"
        return JSONResponse(
            p.error_body(str(error.detail), code, error.status_code), error.status_code
        )
