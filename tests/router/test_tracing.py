"""Router spans: a request span, a child per attempt marked by kind and as winner or loser,
GenAI attributes, and the backend's own call under its attempt's span."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adapters.backend import Batch
from adapters.deadline import Deadline
from imesh.api import CallContext
from imesh.errors import MeshError
from imesh.v1 import adapter_service_pb2
from router.service import ChatRouter
from router.tracing import RouterTracer, tracing_enabled
from tests.reliability.mesh_fakes import (
    DEPLOYMENTS,
    Script,
    ScriptedBackend,
    mesh_config,
    unavailable,
    user_input,
)


class CallingBackend(ScriptedBackend):
    """A ScriptedBackend that opens a span of its own per call, as an instrumented gRPC or
    HTTP client does: it must hang under the attempt that made the call."""

    def __init__(self, provider: TracerProvider, *scripts: Script) -> None:
        super().__init__(*scripts)
        self._tracer = provider.get_tracer("test.upstream")

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        with self._tracer.start_as_current_span(f"upstream {request.deployment}"):
            async for batch in super().chat(request, deadline):
                yield batch


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def build(
    provider: TracerProvider, scripts: dict[str, list[Script]], aliases: dict[str, Any]
) -> ChatRouter:
    backends = {DEPLOYMENTS[d]: CallingBackend(provider, *scripts.get(d, [])) for d in DEPLOYMENTS}
    return ChatRouter(mesh_config(aliases), backends, tracer=RouterTracer(provider))


async def drain(router: ChatRouter, model: str) -> None:
    request = user_input(model, max_tokens=64, temperature=0.5)
    async for _ in router.chat_batches(request, CallContext(request_id="rid-1")):
        pass


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in finished}


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    assert span.attributes is not None
    return span.attributes


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def test_a_hedge_that_wins_and_the_primary_that_loses_are_children_of_the_request(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    router = build(
        provider,
        {"dep-a": [Script(ttft=2.0)], "dep-b": [Script(tokens=("fast",))]},
        {"quick": {"candidates": ["dep-a", "dep-b"], "hedging": {"enabled": True, "delay_ms": 20}}},
    )
    try:
        await drain(router, "quick")
    finally:
        await router.aclose()
    named = by_name(exporter.get_finished_spans())
    request = named["chat quick"]
    primary, hedge = named["attempt dep-a"], named["attempt dep-b"]
    assert parent_of(request) is None
    assert parent_of(primary) == parent_of(hedge) == request.context.span_id
    assert {s.context.trace_id for s in named.values()} == {request.context.trace_id}
    assert attrs(primary)["imesh.attempt.kind"] == "primary"
    assert attrs(primary)["imesh.attempt.winner"] is False
    assert attrs(hedge)["imesh.attempt.kind"] == "hedge"
    assert attrs(hedge)["imesh.attempt.winner"] is True
    # The upstream call of each attempt hangs under that attempt's span.
    assert parent_of(named["upstream dep-b"]) == hedge.context.span_id
    assert parent_of(named["upstream dep-a"]) == primary.context.span_id
    assert attrs(request)["gen_ai.request.model"] == "quick"
    assert attrs(request)["gen_ai.usage.output_tokens"] == 1
    assert attrs(request)["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs(request)["imesh.request_id"] == "rid-1"
    assert attrs(request)["gen_ai.request.max_tokens"] == 64
    assert attrs(request)["gen_ai.request.temperature"] == 0.5
    assert attrs(hedge)["gen_ai.response.model"] == "dep-b-model"
    assert attrs(hedge)["gen_ai.usage.input_tokens"] == 10
    assert request.status.status_code is trace.StatusCode.UNSET


async def test_a_failed_attempt_and_its_fallback_carry_their_kind_and_error(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    router = build(
        provider,
        {"dep-a": [Script(fail_at=0, error=unavailable())]},
        {"chain": {"candidates": ["dep-a", "dep-b"], "retry": {"backoff_base_ms": 0}}},
    )
    try:
        await drain(router, "chain")
    finally:
        await router.aclose()
    named = by_name(exporter.get_finished_spans())
    failed, fallback = named["attempt dep-a"], named["attempt dep-b"]
    assert attrs(failed)["error.type"] == "UPSTREAM_UNAVAILABLE"
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert attrs(fallback)["imesh.attempt.kind"] == "fallback"
    assert attrs(fallback)["imesh.attempt.winner"] is True
    assert attrs(named["chat chain"])["imesh.fallbacks"] == 1


async def test_a_refused_request_ends_its_span_with_the_reason(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    router = build(provider, {}, {})
    try:
        with pytest.raises(MeshError):
            await drain(router, "no-such-model")
    finally:
        await router.aclose()
    (request,) = exporter.get_finished_spans()
    assert attrs(request)["error.type"] == "MODEL_NOT_FOUND"
    assert request.status.status_code is trace.StatusCode.ERROR


def test_without_an_sdk_tracing_is_off() -> None:
    assert not tracing_enabled(trace.NoOpTracerProvider())
    assert not RouterTracer(trace.NoOpTracerProvider()).enabled
    assert RouterTracer(TracerProvider()).enabled
