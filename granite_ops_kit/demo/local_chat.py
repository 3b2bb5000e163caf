"""Serve a model on loopback for a moment and ask it one chat question (used by `gkit demo`).

The server is the real one (`gkit serve`'s), on a free port on 127.0.0.1, driven over HTTP
with the standard library so the demo needs no client package.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask_once(model: Path, question: str, max_tokens: int = 24, timeout: float = 120) -> dict:
    """Start the server, send one chat completion, stop; returns the response and timings."""
    import uvicorn

    from granite_runtime.server.app import create_app
    from granite_runtime.server.run import build_service

    started = time.perf_counter()
    service = build_service(model, "cpu", None, max_num_seqs=2, max_model_len=512)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_healthy(port, timeout)
        body = json.dumps(
            {
                "model": service.model_name,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": question}],
            }
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    finally:
        server.should_exit = True
        thread.join(timeout)
    return {
        "url": f"http://127.0.0.1:{port}/v1",
        "response": answer,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _wait_healthy(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"the demo server on port {port} did not become healthy")
