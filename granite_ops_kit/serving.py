"""`gkit serve` as a function: the built-in runtime over the OpenAI API, its start and stop
recorded (runtime.started, runtime.stopped) through the recorder it is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from granite_ops_kit.audit import events
from granite_ops_kit.errors import runtime_errors
from granite_runtime.spec.memory import PREFILL_CHUNK


@dataclass(kw_only=True)
class ServeRequest:
    model_path: Path
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    dtype: str | None = None
    max_num_seqs: int = 8
    max_model_len: int | None = None
    api_key: str | None = None
    served_model_name: str | None = None
    gpus: int = 1
    prefill_chunk: int = PREFILL_CHUNK
    prefill_beside: bool = True  # prompts on a CUDA stream beside the decode steps
    stall_seconds: float = 120.0  # granite_runtime.server.app.STALL_SECONDS


def serve(req: ServeRequest, recorder: events.Recorder, announce: Callable[[str], None]) -> None:
    """Load, announce, record the start, serve until stopped, record the stop. A server
    whose start cannot be recorded does not start."""
    recorder.ensure_recordable()
    with runtime_errors():
        from granite_runtime.server.run import build_service, run_server

        service = build_service(
            req.model_path,
            req.device,
            req.dtype,
            req.max_num_seqs,
            req.max_model_len,
            req.api_key,
            req.served_model_name,
            req.gpus,
            req.prefill_chunk,
            req.prefill_beside,
            stall_seconds=req.stall_seconds,
        )
        engine = service.engine
        split = f", split over {req.gpus} processes" if req.gpus > 1 else ""
        prompts = "beside" if engine.prefill is not None else "inside"
        announce(
            f"serving {service.model_name} on http://{req.host}:{req.port} ({engine.device}"
            f"{split}, {engine.max_num_seqs} slots x {engine.max_model_len} tokens, prompts "
            f"{prompts} the decode steps)"
        )
        where = f"{service.model_name} on {req.host}:{req.port}"
        started = events.runtime(
            "runtime.started", req.model_path, f"serving {where}", engine, req.gpus
        )
        recorder.record(started)
        try:
            run_server(service, req.host, req.port)
        finally:
            stopped = events.runtime(
                "runtime.stopped", req.model_path, f"stopped {where}", engine, req.gpus
            )
            recorder.record(stopped)


@dataclass(kw_only=True)
class GenerateRequest:
    model_path: Path
    prompt: str
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    chat: bool = True  # wrap the prompt in the model's chat template
    device: str = "cpu"
    dtype: str | None = None
    json_schema: dict | None = None
    schema_name: str = "schema"


@dataclass
class Generated:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    load_seconds: float
    generate_seconds: float

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            },
            "seconds": {"load": self.load_seconds, "generate": self.generate_seconds},
        }


def generate(req: GenerateRequest) -> Generated:
    """`gkit generate`: one completion from a local model, without a server."""
    import time

    with runtime_errors():
        from granite_runtime.engine.engine import Engine
        from granite_runtime.engine.sampling import SamplingParams
        from granite_runtime.engine.tokenizer import TextCodec
        from granite_runtime.model.loader import load_model

        started = time.perf_counter()
        model = load_model(req.model_path, req.dtype, req.device)
        codec = TextCodec.from_dir(req.model_path)
        messages = [{"role": "user", "content": req.prompt}]
        ids = codec.encode(codec.render_chat(messages) if req.chat else req.prompt)
        length = min(model.config.max_position_embeddings, len(ids) + req.max_tokens + 1)
        engine = Engine(model, codec, max_num_seqs=1, max_model_len=length)
        schema = req.json_schema
        grammar = engine.grammars.json_schema(schema, req.schema_name) if schema else None
        loaded = time.perf_counter()
        params = SamplingParams(
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            max_tokens=req.max_tokens,
            grammar=grammar,
        )
        seq = engine.generate(ids, params)
        done = time.perf_counter()
    return Generated(
        seq.text,
        seq.finish_reason,
        len(ids),
        len(seq.output_ids),
        round(loaded - started, 3),
        round(done - loaded, 3),
    )
