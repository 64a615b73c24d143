"""Prometheus metrics of the serving API, in a registry of their own (one per ingress replica)."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    """Request counts and latency by route and status, batch sizes, rejected inputs by reason, model version."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pawfinder_http_requests", "HTTP requests answered.", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "pawfinder_http_request_duration_seconds",
            "Time from request start to the last response byte.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "pawfinder_inference_batch_size",
            "Size of the dynamic batch each image was classified in.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "pawfinder_rejected_inputs", "Requests or files refused, by reason.", ["reason"], registry=self.registry
        )
        self.predictions = Counter(
            "pawfinder_predictions", "Images classified, by pet decision.", ["is_pet"], registry=self.registry
        )
        self.model_info = Gauge(
            "pawfinder_model_info", "The model being served (value 1).", ["name", "version"], registry=self.registry
        )
        self._model: tuple[str, str] | None = None

    def set_model(self, name: str, version: str) -> None:
        """Record the served model; the previous version's series disappears."""
        if self._model == (name, version):
            return
        if self._model is not None:
            self.model_info.remove(*self._model)
        self.model_info.labels(name, version).set(1)
        self._model = (name, version)

    def render(self) -> bytes:
        """The Prometheus text exposition of all metrics."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request; routes are labelled by their template, never by raw path."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            labels = (route, scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
