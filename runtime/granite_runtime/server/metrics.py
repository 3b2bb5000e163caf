"""Prometheus metrics for one server: requests, tokens, queue, time to first token, cache use."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self, engine) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gkit_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter("gkit_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("gkit_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "gkit_time_to_first_token_seconds",
            "Arrival to first token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        Gauge("gkit_queue_length", "Requests waiting for a slot", registry=r).set_function(
            lambda: len(engine.waiting)
        )
        Gauge("gkit_running_sequences", "Sequences holding a slot", registry=r).set_function(
            lambda: len(engine.running)
        )
        Gauge(
            "gkit_cache_usage_ratio", "Fraction of KV token capacity in use", registry=r
        ).set_function(engine.cache_usage)
        Gauge("gkit_cache_slots_total", "Sequence slots allocated", registry=r).set(
            engine.max_num_seqs
        )
        Gauge(
            "gkit_engine_step_seconds",
            "How long the step now running has taken (0 while idle; /health fails past its limit)",
            registry=r,
        ).set_function(engine.stalled_for)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestCounter:
    """ASGI middleware counting requests by endpoint and status. Plain ASGI, not Starlette's
    BaseHTTPMiddleware, which relays every chunk of a streamed response through a memory
    stream of its own: one more task hop per token per stream."""

    def __init__(self, app, metrics: Metrics, known: set[str]) -> None:
        self.app, self.metrics, self.known = app, metrics, known

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.known else "other"  # bounded labels
        status = []

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                self.metrics.requests.labels(path, str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            if not status:  # failed before answering: what the client will see is a 500
                self.metrics.requests.labels(path, "500").inc()
