"""Start the server: load the model, size the pools, run uvicorn with a graceful shutdown."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from granite_runtime.parallel.launch import start_engine
from granite_runtime.server.app import STALL_SECONDS, Service, create_app
from granite_runtime.spec.memory import PREFILL_CHUNK

log = logging.getLogger("granite_runtime")


def build_service(
    model_path: str | Path,
    device: str = "cpu",
    dtype: str | None = None,
    max_num_seqs: int = 8,
    max_model_len: int | None = None,
    api_key: str | None = None,
    served_name: str | None = None,
    gpus: int = 1,
    prefill_chunk: int = PREFILL_CHUNK,
    prefill_beside_decode: bool = True,
    stall_seconds: float = STALL_SECONDS,
) -> Service:
    """The engine (launch.start_engine: split over `gpus` processes when > 1) and the API;
    /health fails once one step has run `stall_seconds`."""
    engine = start_engine(
        model_path, device, dtype, max_num_seqs, max_model_len, gpus, prefill_chunk,
        prefill_beside_decode,
    )  # fmt: skip
    name = served_name or Path(model_path).resolve().name
    return Service(engine, name, api_key, stall_seconds)


def _exit_after_shutdown(signum, _frame) -> None:
    # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is done; ending by
    # SystemExit instead of the default handler lets the caller's `finally` run (its stop
    # record), and still exits with the status a killed process reports.
    raise SystemExit(128 + signum)


SWITCH_INTERVAL_S = 0.0005


def run_server(
    service: Service, host: str = "127.0.0.1", port: int = 8000, graceful_seconds: int = 30
) -> None:
    """Blocks until SIGINT/SIGTERM; open streams get `graceful_seconds` to finish."""
    import signal

    import uvicorn

    # The engine thread and the event loop share the GIL. A thread that wants it waits for
    # the holder's switch interval (5 ms by default) unless the holder blocks first; a decode
    # step takes a few ms, so the default turned every hand-off into a stall of up to a step.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = create_app(service)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_seconds
    )
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    uvicorn.Server(config).run()
