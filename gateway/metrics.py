"""The edge's telemetry: request metrics and a SERVER span per HTTP request (taken by the
edge's dispatcher, gateway.dispatch), and the `/metrics` endpoint serving the edge's figures.

The edge's port is public: its `/metrics` never serves the process's registry, which in
`imesh up` holds the router's per-tenant series (spend, tokens, limits left). Those are
served only on the internal metrics port (`--metrics`), beside the edge's figures.

The span continues the caller's W3C trace context (`traceparent` header) and is current
while the handler runs, so the in-process router's spans (`imesh up`) and the gRPC client's
`traceparent` metadata (`imesh gateway`) hang under it. Metrics are updated once per
request, when its response has ended (a stream included), never per chunk: the route's
figures are looked up once, when the app is built, not per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.types import Receive, Scope, Send

from gateway.loop_histogram import LoopHistogram, LoopHistograms
from gateway.responses import Exchange

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


class RouteFigures:
    """One route label's answers by status code and its duration histogram."""

    __slots__ = ("answered", "durations")

    def __init__(self, durations: LoopHistogram) -> None:
        self.answered: dict[int, int] = {}
        self.durations = durations

    def observe(self, code: int, seconds: float) -> None:
        answered = self.answered
        answered[code] = answered.get(code, 0) + 1
        self.durations.observe(seconds)


class EdgeMetrics(Collector):
    """The edge's figures, as plain numbers rendered when Prometheus scrapes. Registered on
    the process's registry (the internal metrics port) and on `public`, a registry of its
    own that the edge's `/metrics` serves. The requests and the scrape share the event
    loop, so no lock is needed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_flight = 0
        self._routes: dict[str, RouteFigures] = {}
        self._durations = LoopHistograms(DURATION_BUCKETS)
        registry.register(self)
        self.public = CollectorRegistry()
        self.public.register(self)

    def route(self, label: str) -> RouteFigures:
        """The figures of one route label, to observe its requests with (made once)."""
        figures = self._routes.get(label)
        if figures is None:
            figures = self._routes[label] = RouteFigures(self._durations.histogram(label))
        return figures

    def observe(self, route: str, code: int, seconds: float) -> None:
        self.route(route).observe(code, seconds)

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily | GaugeMetricFamily]:
        answered = CounterMetricFamily(
            "imesh_edge_requests",
            "HTTP requests answered by the REST edge, by route and status code.",
            labels=("route", "code"),
        )
        for route, figures in self._routes.items():
            for code, count in figures.answered.items():
                answered.add_metric((route, str(code)), count)
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


class EdgeTracer:
    """SERVER spans for the edge's requests, continuing the caller's trace context."""

    __slots__ = ("_tracer",)

    def __init__(self, provider: trace.TracerProvider) -> None:
        self._tracer = provider.get_tracer("imesh.gateway")

    def span(self, scope: Scope, route: str) -> AbstractContextManager[trace.Span]:
        """The request's span, current while it is entered."""
        method: str = scope["method"]
        parent = propagate.extract(scope["headers"], getter=_GETTER)
        return self._tracer.start_as_current_span(
            f"{method} {route}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        )

    @staticmethod
    def end(span: trace.Span, status: int) -> None:
        """Record the response's status (0: the caller left before any, 499) on `span`."""
        span.set_attribute("http.response.status_code", status or 499)
        if status >= 500:
            span.set_status(trace.StatusCode.ERROR)


class MetricsEndpoint:
    """`GET /metrics`: a registry in the Prometheus text format (an edge handler)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    async def __call__(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        body = generate_latest(self._registry)
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        ex.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True, slots=True)
class EdgeObservability:
    """What the edge exposes, given by the composition root: its metrics registered on
    `registry` (the process's, for the internal metrics port) and `GET /metrics` serving
    the edge's figures alone; spans from `tracer_provider`. The default is both off: the
    edge then takes no figures and opens no spans. One per app: building it registers the edge's
    metrics."""

    registry: CollectorRegistry | None = None
    tracer_provider: trace.TracerProvider | None = None
    metrics: EdgeMetrics | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.registry is not None:
            object.__setattr__(self, "metrics", EdgeMetrics(self.registry))

    def metrics_endpoint(self) -> MetricsEndpoint | None:
        """`GET /metrics` over the edge's own figures; None when metrics are off."""
        return None if self.metrics is None else MetricsEndpoint(self.metrics.public)

    def tracer(self) -> EdgeTracer | None:
        return None if self.tracer_provider is None else EdgeTracer(self.tracer_provider)


NO_OBSERVABILITY = EdgeObservability()
