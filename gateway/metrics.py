"""The edge's telemetry: request metrics and a SERVER span per HTTP request, as one raw ASGI
middleware, and the `/metrics` endpoint that serves the edge's own figures.

The edge's port is public: its `/metrics` never serves the process's registry, which in
`imesh up` holds the router's per-tenant series (spend, tokens, limits left). Those are
served only on the internal metrics port (`--metrics`), beside the edge's figures.

The span continues the caller's W3C trace context (`traceparent` header) and is current
while the handler runs, so the in-process router's spans (`imesh up`) and the gRPC client's
`traceparent` metadata (`imesh gateway`) hang under it. Metrics are updated once per
request, when its response has ended (a stream included), never per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.loop_histogram import LoopHistograms

# Route labels: the edge's fixed paths; anything else is "other" (never the raw path).
_ROUTES: dict[str, str] = {
    "/v1/chat/completions": "chat_completions",
    "/v1/models": "models",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
}
_MODEL_PREFIX = "/v1/models/"
# Seconds: from a cache hit to a long stream.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def route_label(path: str) -> str:
    """A bounded label for a request path."""
    route = _ROUTES.get(path)
    if route is not None:
        return route
    return "model" if path.startswith(_MODEL_PREFIX) else "other"


class EdgeMetrics(Collector):
    """The edge's figures, as plain numbers rendered when Prometheus scrapes. Registered on
    the process's registry (the internal metrics port) and on `public`, a registry of its
    own that the edge's `/metrics` serves. The requests and the scrape share the event
    loop, so no lock is needed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_flight = 0
        self._answered: dict[tuple[str, str], int] = {}
        self._durations = LoopHistograms(DURATION_BUCKETS)
        registry.register(self)
        self.public = CollectorRegistry()
        self.public.register(self)

    def observe(self, route: str, code: int, seconds: float) -> None:
        key = (route, str(code))
        self._answered[key] = self._answered.get(key, 0) + 1
        self._durations.observe(route, seconds)

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily | GaugeMetricFamily]:
        answered = CounterMetricFamily(
            "imesh_edge_requests",
            "HTTP requests answered by the REST edge, by route and status code.",
            labels=("route", "code"),
        )
        for key, count in self._answered.items():
            answered.add_metric(key, count)
        yield answered
        yield self._durations.family(
            "imesh_edge_request_duration_seconds",
            "Time from a request's arrival to its response's last byte (a stream's end).",
            "route",
        )
        yield GaugeMetricFamily(
            "imesh_edge_in_flight_requests",
            "HTTP requests the edge is answering now (open streams included).",
            value=self.in_flight,
        )


class _HeaderGetter(Getter[list[tuple[bytes, bytes]]]):
    """Reads W3C trace headers from ASGI's raw header list."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        wanted = key.encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier if k == wanted]
        return values or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_GETTER = _HeaderGetter()


class EdgeTelemetry:
    """Raw ASGI middleware around the edge app (Starlette's `middleware=`). Build it only
    when metrics or tracing are on: with both off the app runs without it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: EdgeMetrics | None,
        tracer_provider: trace.TracerProvider | None,
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._tracer = (
            None if tracer_provider is None else tracer_provider.get_tracer("imesh.gateway")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        route = route_label(scope["path"])
        status = 0

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        t0 = time.perf_counter()
        metrics = self._metrics
        if metrics is not None:
            metrics.in_flight += 1
        try:
            if self._tracer is None:
                await self._app(scope, receive, observed_send)
            else:
                await self._traced(scope, receive, observed_send, route, lambda: status)
        finally:
            if metrics is not None:
                metrics.in_flight -= 1
                # 499: the caller left before any response (nginx's convention).
                metrics.observe(route, status or 499, time.perf_counter() - t0)

    async def _traced(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: str,
        status: Callable[[], int],
    ) -> None:
        assert self._tracer is not None
        method: str = scope["method"]
        parent = propagate.extract(scope["headers"], getter=_GETTER)
        with self._tracer.start_as_current_span(
            f"{method} {route}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        ) as span:
            try:
                await self._app(scope, receive, send)
            finally:
                code = status()
                span.set_attribute("http.response.status_code", code or 499)
                if code >= 500:
                    span.set_status(trace.StatusCode.ERROR)


class MetricsEndpoint:
    """`GET /metrics`: a registry in the Prometheus text format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = generate_latest(self._registry)
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True, slots=True)
class EdgeObservability:
    """What the edge exposes, given by the composition root: its metrics registered on
    `registry` (the process's, for the internal metrics port) and `GET /metrics` serving
    the edge's figures alone; spans from `tracer_provider`. The default is both off: the
    app then runs without the middleware. One per app: building it registers the edge's
    metrics."""

    registry: CollectorRegistry | None = None
    tracer_provider: trace.TracerProvider | None = None
    metrics: EdgeMetrics | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.registry is not None:
            object.__setattr__(self, "metrics", EdgeMetrics(self.registry))

    def routes(self) -> list[Route]:
        if self.metrics is None:
            return []
        return [Route("/metrics", MetricsEndpoint(self.metrics.public), methods=["GET"])]

    def middleware(self) -> list[Middleware]:
        if self.metrics is None and self.tracer_provider is None:
            return []
        return [
            Middleware(EdgeTelemetry, metrics=self.metrics, tracer_provider=self.tracer_provider)
        ]


NO_OBSERVABILITY = EdgeObservability()
