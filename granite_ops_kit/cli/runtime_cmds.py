"""`gkit serve` and `gkit generate`: thin wrappers over the built-in runtime.

The runtime (torch) is imported inside the commands; its errors become gkit's exit codes
here: a broken checkpoint is a failed check (1), a bad request a usage error (2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

from pathlib import Path

import typer

from granite_ops_kit.cli import output
from granite_ops_kit.cli.options import JSON_OPTION
from granite_ops_kit.errors import UsageError, runtime_errors
from granite_runtime.spec.memory import PREFILL_CHUNK


def _read_schema(path: Path) -> dict:
    from granite_runtime.spec import bounded_read

    try:
        return bounded_read.read_json_object(path, 1 << 20, what="JSON schema")
    except bounded_read.UnsafeInput as bad:
        raise UsageError(bad.message) from None


def _model_dir(path: Path) -> Path:
    if not path.exists():
        raise UsageError(f"{path}: no such model directory.")
    if not path.is_dir():
        raise UsageError(f"{path}: not a directory; give the model's directory.")
    return path


def _default_device(device: str | None) -> str:
    if device:
        if device not in {"cpu", "cuda"}:
            raise UsageError(f"--device must be cpu or cuda, not '{device}'.")
        return device
    with runtime_errors():  # no torch: the runtime extra is missing, said in one sentence
        import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _serve_device(device: str | None, gpus: int) -> str:
    """--gpus N asks for GPUs: without any, say so rather than fall back to CPU processes."""
    chosen = _default_device(device)
    if gpus > 1 and device is None and chosen == "cpu":
        raise UsageError(
            f"--gpus {gpus}: this machine has no CUDA GPU; pass --device cpu to split the "
            "model over CPU processes instead (for testing)."
        )
    return chosen


def serve(
    model_path: Path = typer.Argument(..., help="A Granite checkpoint directory."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 in containers)."),
    port: int = typer.Option(8000, help="TCP port."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    dtype: str = typer.Option(
        None,
        help="float32, bfloat16, float16, or fp8 (weights in float8 with per-channel scales; "
        "GPUs with FP8 tensor cores: Ada, Hopper). Default: the config's.",
    ),
    max_num_seqs: int = typer.Option(8, min=1, help="Concurrent sequences (cache slots)."),
    max_model_len: int = typer.Option(
        None, min=16, help="Context per sequence (default: the model's, at most 4096)."
    ),
    prefill_chunk: int = typer.Option(
        PREFILL_CHUNK,
        min=16,
        help="Prompt tokens one step runs: larger chunks fill long prompts sooner (time to "
        "first token), smaller ones delay running streams less (inter-token latency). "
        "`gkit size --prefill-chunk` counts its memory.",
    ),
    prefill_beside: bool = typer.Option(
        True,
        "--prefill-beside/--prefill-inside",
        help="On one GPU, run prompts on a CUDA stream of their own beside the decode steps, "
        "so no running stream waits for a whole prompt chunk (lower inter-token latency while "
        "prompts arrive); --prefill-inside runs them as chunks inside the steps (the CPU and "
        "--gpus > 1 always do).",
    ),
    stall_seconds: float = typer.Option(
        120.0,
        min=1.0,
        help="/health answers 503 once one engine step has run this long (a hung GPU), so a "
        "liveness probe restarts the server.",
    ),
    api_key: str = typer.Option(
        None,
        envvar="GKIT_API_KEY",
        help="Require 'Authorization: Bearer KEY' on /v1 (prefer the GKIT_API_KEY variable).",
    ),
    served_model_name: str = typer.Option(
        None, help="Model id in the API (default: the directory name)."
    ),
    gpus: int = typer.Option(
        1,
        min=1,
        max=8,
        help="GPUs of this host to split the model over (tensor parallelism: one process per "
        "GPU). With --device cpu, that many processes (tests the split without GPUs).",
    ),
) -> None:
    """Serve a model over the OpenAI API: /v1/models, /v1/completions, /v1/chat/completions
    (streaming, tools), /health and Prometheus /metrics.

    Stops gracefully on Ctrl-C or SIGTERM: open streams finish first (30 s at most).

    Example: gkit serve ./h-small --gpus 2 --host 0.0.0.0
    """
    from granite_ops_kit.cli.ports import check_port_free
    from granite_ops_kit.cli.supply_cmds import recorder
    from granite_ops_kit.serving import ServeRequest
    from granite_ops_kit.serving import serve as serve_model

    check_port_free(host, port)  # before minutes of loading, not after
    with runtime_errors():
        req = ServeRequest(
            model_path=_model_dir(model_path),
            host=host,
            port=port,
            device=_serve_device(device, gpus),
            dtype=dtype,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            api_key=api_key,
            served_model_name=served_model_name,
            gpus=gpus,
            prefill_chunk=prefill_chunk,
            prefill_beside=prefill_beside,
            stall_seconds=stall_seconds,
        )
    serve_model(req, recorder(), output.stderr.print)


def generate(
    model_path: Path = typer.Argument(..., help="A Granite checkpoint directory."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The text to continue or answer."),
    max_tokens: int = typer.Option(64, min=1, help="Tokens to generate at most."),
    temperature: float = typer.Option(0.0, min=0.0, max=2.0, help="0 is greedy (default)."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    seed: int = typer.Option(None, help="Seed for sampling (temperature > 0)."),
    chat: bool = typer.Option(
        True,
        "--chat/--raw",
        help="Wrap the prompt in the model's chat template (default) or continue the raw text.",
    ),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    dtype: str = typer.Option(None, help="float32, bfloat16, float16, or fp8 (FP8 GPUs)."),
    json_schema: Path = typer.Option(
        None,
        "--json-schema",
        help="Constrain the answer to JSON that validates against this JSON Schema file "
        "(a keyword gkit cannot enforce is refused, exit 2).",
    ),
    json_: bool = JSON_OPTION,
) -> None:
    """Generate text from a local model once, without a server.

    Example: gkit generate ./h-micro -p "A pet as JSON" --json-schema pet.schema.json
    """
    from granite_ops_kit import serving

    output.use_json(json_)
    req = serving.GenerateRequest(
        model_path=_model_dir(model_path),
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        chat=chat,
        device=_default_device(device),
        dtype=dtype,
        json_schema=_read_schema(json_schema) if json_schema else None,
        schema_name=str(json_schema),
    )
    result = serving.generate(req)

    def render(con: Console) -> None:
        con.print(result.text, markup=False)
        output.stderr.print(
            f"[dim]{result.completion_tokens} tokens in {result.generate_seconds:.2f} s, "
            f"finish: {result.finish_reason}[/]"
        )

    output.emit(result.to_json(), render)


__all__ = ["generate", "serve"]
