"""The edge's telemetry: the public `/metrics` parses and serves the edge's figures alone
(the router's per-tenant families stay on the process's registry, for the internal metrics
port), its labels stay bounded whatever paths and request ids callers send, and the edge's
span continues the caller's trace with the router's spans under it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from adapters.simulated import SimulatedBackend
from gateway.metrics import EdgeObservability, route_label
from gateway.server import GatewayServer, start_gateway
from router.metrics import RouterMetrics
from router.service import ChatRouter
from router.tracing import RouterTracer
from tests.gateway.conftest import mesh_config

BODY = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


class Edge:
    def __init__(self, server: GatewayServer, router: ChatRouter) -> None:
        self.server = server
        self.router = router
        self.url = f"http://127.0.0.1:{server.port}"


async def start(observability: EdgeObservability, tracer: RouterTracer | None = None) -> Edge:
    config = mesh_config()
    backends = {name: SimulatedBackend(p) for name, p in config.providers.items()}  # type: ignore[arg-type]
    sinks = []
    if observability.registry is not None:
        metrics = RouterMetrics(
            observability.registry,
            models=config.aliases,
            deployments=[d.name for d in config.deployments],
        )
        sinks.append(metrics)
    router = ChatRouter(config, backends, sinks=sinks, tracer=tracer)
    if sinks:
        metrics.watch(router.breakers, router.stats)
    server = await start_gateway(router, config.gateway, "127.0.0.1:0", observability)
    return Edge(server, router)


@pytest.fixture
async def metered() -> AsyncIterator[tuple[Edge, CollectorRegistry]]:
    registry = CollectorRegistry()
    edge = await start(EdgeObservability(registry=registry))
    try:
        yield edge, registry
    finally:
        await edge.server.stop()
        await edge.router.aclose()


def series(text: str) -> int:
    return sum(len(family.samples) for family in text_string_to_metric_families(text))


async def test_public_metrics_serve_the_edge_alone_and_the_registry_holds_the_router_too(
    metered: tuple[Edge, CollectorRegistry],
) -> None:
    edge, registry = metered
    async with httpx.AsyncClient(base_url=edge.url) as http:
        assert (await http.post("/v1/chat/completions", json=BODY)).status_code == 200
        assert (await http.get("/v1/nope")).status_code == 404
        reply = await http.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    public = {f.name for f in text_string_to_metric_families(reply.text)}
    assert public == {
        "imesh_edge_requests",
        "imesh_edge_request_duration_seconds",
        "imesh_edge_in_flight_requests",
    }
    assert "tenant=" not in reply.text
    # The internal metrics port serves the process's registry: edge and router, tenants too.
    internal = {f.name: f for f in registry.collect()}
    assert {"imesh_edge_requests", "imesh_requests", "imesh_tokens"} <= internal.keys()
    assert any("tenant" in s.labels for s in internal["imesh_tokens"].samples)
    get = registry.get_sample_value
    assert get("imesh_edge_requests_total", {"route": "chat_completions", "code": "200"}) == 1
    assert get("imesh_edge_requests_total", {"route": "other", "code": "404"}) == 1
    assert get("imesh_edge_request_duration_seconds_count", {"route": "chat_completions"}) == 1
    assert get("imesh_edge_in_flight_requests") == 0  # every answered request let go


async def test_label_cardinality_stays_bounded_after_1000_distinct_requests(
    metered: tuple[Edge, CollectorRegistry],
) -> None:
    edge, _ = metered
    async with httpx.AsyncClient(base_url=edge.url) as http:

        async def one(i: int) -> None:
            rid = {"x-request-id": f"rid-{uuid.uuid4().hex}"}
            if i % 2:
                await http.post("/v1/chat/completions", json=BODY, headers=rid)
            else:
                await http.get(f"/v1/models/unseen-{uuid.uuid4().hex}", headers=rid)

        for i in range(20):
            await one(i)
        await http.get("/metrics")  # a scrape is counted once it is answered
        before = series((await http.get("/metrics")).text)
        for i in range(1000):
            await one(i)
        text = (await http.get("/metrics")).text
    assert series(text) == before
    assert "rid-" not in text
    assert "unseen-" not in text


def test_route_labels_are_a_fixed_set() -> None:
    assert route_label("/v1/chat/completions") == "chat_completions"
    assert route_label("/v1/models/gpt-x") == "model"
    assert route_label("/v1/anything/" + uuid.uuid4().hex) == "other"


async def test_the_edge_span_continues_the_callers_trace_and_parents_the_router() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    edge = await start(EdgeObservability(tracer_provider=provider), RouterTracer(provider))
    try:
        async with httpx.AsyncClient(base_url=edge.url) as http:
            reply = await http.post(
                "/v1/chat/completions",
                json={**BODY, "stream": True},
                headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
            )
            assert reply.status_code == 200
            assert (await http.get("/metrics")).status_code == 404  # metrics off
    finally:
        await edge.server.stop()
        await edge.router.aclose()
    named = {s.name: s for s in exporter.get_finished_spans()}
    edge_span, request = named["POST chat_completions"], named["chat fast"]
    assert edge_span.kind is trace.SpanKind.SERVER
    assert format(edge_span.context.trace_id, "032x") == CALLER_TRACE
    assert edge_span.parent is not None
    assert format(edge_span.parent.span_id, "016x") == CALLER_SPAN
    assert request.parent is not None
    assert request.parent.span_id == edge_span.context.span_id
    assert edge_span.attributes is not None
    assert edge_span.attributes["http.response.status_code"] == 200
