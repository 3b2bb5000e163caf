"""Load and failure behaviour of a real server: many clients, bad clients, shutdown."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.server_process import ServerProcess

KEY = "load-key"


@pytest.fixture(scope="module")
def server(tiny_hybrid):
    proc = ServerProcess(tiny_hybrid, "--max-num-seqs", "16", "--max-model-len", "512", api_key=KEY)
    yield proc
    proc.stop()


def _metric(server, name: str) -> float:
    with urllib.request.urlopen(server.base + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


class HealthWatch:
    """Asks /health every 20 ms on a thread of its own while the block runs; `slowest` is
    the longest answer (seconds), `failures` the answers that were not 200."""

    def __init__(self, base: str):
        self.base, self.times, self.failures = base, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    self.failures += r.status != 200
            except OSError:
                self.failures += 1
            self.times.append(time.monotonic() - started)
            self._stop.wait(0.02)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def slowest(self) -> float:
        return max(self.times)


def _rss_peak_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM) so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_64_concurrent_streaming_clients_complete_with_the_right_lengths(server):
    async def one(client: AsyncOpenAI, i: int) -> tuple[int, str | None, int]:
        stream = await client.chat.completions.create(
            model="tiny-hybrid",
            max_tokens=8 + i % 9,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
            messages=[{"role": "user", "content": f"client {i}: say something"}],
        )
        reason, tokens = None, -1
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                reason = chunk.choices[0].finish_reason
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return i, reason, tokens

    async def all_clients():
        client = AsyncOpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=300)
        return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(64))), 300)

    results = asyncio.run(all_clients())
    assert len(results) == 64
    for i, reason, tokens in results:
        assert (reason, tokens) == ("length", 8 + i % 9), i
    assert _metric(server, "gkit_running_sequences") == 0
    assert _metric(server, "gkit_queue_length") == 0


def test_client_that_disconnects_mid_stream_frees_its_slot(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = json.dumps(
        {
            "model": "tiny-hybrid",
            "prompt": "go",
            "max_tokens": 400,
            "stream": True,
            "ignore_eos": True,
        }
    )
    conn.request(
        "POST",
        "/v1/completions",
        body,
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    assert response.status == 200
    first = response.readline()
    assert first.startswith(b"data: ")
    conn.sock.shutdown(2)
    conn.close()
    deadline = time.monotonic() + 20
    while _metric(server, "gkit_running_sequences") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _metric(server, "gkit_running_sequences") == 0
    # ... and the server keeps serving.
    client = OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0)
    r = client.completions.create(
        model="tiny-hybrid", prompt="still there?", max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 3


def test_bad_requests_during_load_get_their_errors_and_serving_continues(server):
    client = OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0)
    results: list[int] = []

    def good():
        r = client.completions.create(
            model="tiny-hybrid", prompt="busy", max_tokens=30, extra_body={"ignore_eos": True}
        )
        results.append(r.usage.completion_tokens)

    threads = [threading.Thread(target=good) for _ in range(6)]
    for t in threads:
        t.start()
    errors = {}
    for name, call in {
        "oversized": lambda: client.completions.create(model="tiny-hybrid", prompt=[1] * 600),
        "unknown model": lambda: client.completions.create(model="x", prompt="a"),
        "wrong key": lambda: OpenAI(
            base_url=server.base + "/v1", api_key="bad", max_retries=0
        ).completions.create(model="tiny-hybrid", prompt="a"),
    }.items():
        with pytest.raises(openai.APIStatusError) as caught:
            call()
        errors[name] = caught.value.status_code
    for t in threads:
        t.join(120)
    assert errors == {"oversized": 413, "unknown model": 404, "wrong key": 401}
    assert results == [30] * 6


def test_graceful_shutdown_finishes_open_streams(tiny_hybrid):
    proc = ServerProcess(tiny_hybrid, "--max-model-len", "512")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=60)
        conn.request(
            "POST",
            "/v1/completions",
            json.dumps(
                {"prompt": "long story", "max_tokens": 150, "stream": True, "ignore_eos": True}
            ),
            {"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        first = response.readline()
        assert first.startswith(b"data: ")
        proc.proc.send_signal(signal.SIGTERM)
        rest = response.read().decode()
        events = [ln[6:] for ln in (first.decode() + rest).splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text_chunks = [json.loads(e) for e in events[:-1]]
        assert text_chunks[-1]["choices"][0]["finish_reason"] == "length"
        # uvicorn re-raises SIGTERM once it has shut down cleanly: exit 128 + 15, as a shell
        # reports a process ended by the signal.
        assert proc.proc.wait(30) in (0, 128 + signal.SIGTERM)
        assert "Finished server process" in proc.output()
    finally:
        proc.stop()


def _wait_idle(server, seconds: float = 20) -> float:
    deadline = time.monotonic() + seconds
    while _metric(server, "gkit_running_sequences") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return _metric(server, "gkit_running_sequences")


def test_a_non_streaming_client_that_disconnects_frees_its_slot(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = json.dumps(
        {"model": "tiny-hybrid", "prompt": "go", "max_tokens": 480, "ignore_eos": True}
    )
    conn.request(
        "POST",
        "/v1/completions",
        body,
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with HealthWatch(server.base) as health:
        deadline = time.monotonic() + 10
        while _metric(server, "gkit_running_sequences") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        conn.sock.shutdown(2)
        conn.close()
        assert _wait_idle(server) == 0
    assert _metric(server, "gkit_queue_length") == 0
    assert health.failures == 0 and health.slowest < 0.1, health.times


def test_a_multi_prompt_request_refused_partway_leaves_no_orphans(server):
    client = OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0)
    # the third prompt is too long for the context: refused after two were submitted
    prompts = [[5] * 10, [6] * 10, [7] * 600]
    with HealthWatch(server.base) as health:
        with pytest.raises(openai.APIStatusError) as refused:
            client.completions.create(
                model="tiny-hybrid", prompt=prompts, max_tokens=400, extra_body={"ignore_eos": True}
            )
        assert refused.value.status_code == 413
        assert _wait_idle(server, 5) == 0
    assert _metric(server, "gkit_queue_length") == 0
    assert health.failures == 0 and health.slowest < 0.1, health.times


def test_a_50_mb_body_without_a_length_is_413_and_costs_no_memory(server):
    """A client that sends 50 MB chunked (no Content-Length to refuse it by) is cut off
    past the limit: 413, the server's peak memory grows by under 100 MB, and /health
    answers within 100 ms throughout."""
    before = _rss_peak_bytes(server.proc.pid)
    piece = b"x" * (1 << 20)
    with HealthWatch(server.base) as health:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.putrequest("POST", "/v1/completions")
        conn.putheader("Authorization", f"Bearer {KEY}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for _ in range(50):
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        except OSError:
            pass  # the server may close the connection once it has refused the body
        response = conn.getresponse()
        status, body = response.status, json.loads(response.read())
        conn.close()
        time.sleep(0.2)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert _rss_peak_bytes(server.proc.pid) - before < 100 << 20
    assert health.failures == 0 and health.slowest < 0.1, health.times


def test_an_oversized_body_is_413_before_it_is_read(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(64 << 20))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert "GKIT_MAX_REQUEST_BYTES" in json.loads(response.read())["error"]["message"]
    conn.close()


def test_a_template_bomb_is_refused_and_health_stays_quick(tmp_path, tiny_hybrid):
    import shutil

    model = tmp_path / "bomb"
    shutil.copytree(tiny_hybrid, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ 'x' * 10**8 }}{{ messages[0]['content'] }}"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    proc = ServerProcess(model, "--max-model-len", "256")
    try:
        client = OpenAI(base_url=proc.base + "/v1", api_key="x", max_retries=0)
        started = time.monotonic()
        with HealthWatch(proc.base) as health, pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="bomb", messages=[{"role": "user", "content": "hi"}]
            )
        assert "builds a value over" in str(refused.value) and time.monotonic() - started < 5
        assert health.failures == 0 and health.slowest < 0.1, health.times
        with urllib.request.urlopen(proc.base + "/health", timeout=2) as r:
            assert r.status == 200
    finally:
        proc.stop()


def test_work_arriving_after_a_long_idle_is_not_a_stall(tiny_hybrid):
    """An engine idle for longer than the stall limit gets a request: until its loop wakes
    and steps, no step is running, so /health stays 200 (the age of the last step is not
    a stall). The loop is not started here, which holds that moment open."""
    from fastapi.testclient import TestClient

    from granite_runtime.engine.sampling import SamplingParams
    from granite_runtime.server.app import create_app
    from granite_runtime.server.run import build_service

    service = build_service(tiny_hybrid, "cpu", "float32", 2, 256, stall_seconds=0.2)
    engine = service.engine
    engine.generate([5, 6], SamplingParams(max_tokens=1, ignore_eos=True))  # a step, long ago
    time.sleep(0.4)
    engine.submit([5, 6, 7], SamplingParams(max_tokens=2, ignore_eos=True))
    assert engine.has_work() and engine.stalled_for() == 0.0
    http = TestClient(create_app(service))  # no `with`: the lifespan, and its loop, never run
    assert (http.get("/health").status_code, engine.stalled_for()) == (200, 0.0)


def test_a_step_that_never_returns_fails_health_until_it_returns(tiny_hybrid):
    """A hung GPU kernel leaves the engine in one step forever, and /health (the liveness
    probe) must say so rather than answer ok while every stream waits. A hang cannot be
    caused on a CPU, so the model call blocks on an event instead: that is the fault; the
    engine, the server and the probe are the real ones."""
    from fastapi.testclient import TestClient

    from granite_runtime.engine.sampling import SamplingParams
    from granite_runtime.server.app import create_app
    from granite_runtime.server.run import build_service

    service = build_service(tiny_hybrid, "cpu", "float32", 2, 256, stall_seconds=0.5)
    engine, release = service.engine, threading.Event()
    forward = engine._forward
    engine._forward = lambda *args: (release.wait(30), forward(*args))[1]
    with TestClient(create_app(service)) as http:
        assert http.get("/health").status_code == 200  # idle: never stalled
        seq = engine.submit([5, 6, 7], SamplingParams(max_tokens=2, ignore_eos=True))
        time.sleep(0.3)
        assert http.get("/health").status_code == 200  # within the limit
        deadline = time.monotonic() + 10
        while (r := http.get("/health")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.status_code == 503
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("service_unavailable", "engine_stalled")
        assert "in one step for" in error["message"] and "limit is 0.5 s" in error["message"]
        metrics = http.get("/metrics").text
        age = next(ln for ln in metrics.splitlines() if ln.startswith("gkit_engine_step_seconds "))
        assert float(age.split()[-1]) >= 0.5
        release.set()
        deadline = time.monotonic() + 30
        while seq.finish_reason is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (seq.finish_reason, len(seq.output_ids)) == ("length", 2)
        r = http.get("/health")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        metrics = http.get("/metrics").text
        assert "gkit_engine_step_seconds 0.0" in metrics
