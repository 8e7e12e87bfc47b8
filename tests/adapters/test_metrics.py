"""MeteredBackend: one count per call by outcome and reason, the first batch timed, calls in
flight back to zero however a call ends, closing it closes the wrapped stream at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from adapters.backend import Backend, Batch
from adapters.deadline import NO_DEADLINE, Deadline
from adapters.metrics import MAX_MODELS, AdapterMetrics, MeteredBackend
from imesh.errors import MeshError, Reason
from imesh.v1 import adapter_service_pb2, events_pb2

TOKEN = events_pb2.ChatEvent(content=events_pb2.ContentDelta(text="hi"))


class Scripted(Backend):
    """Yields `batches` batches of one token, then raises `error` if given."""

    def __init__(self, batches: int = 2, error: MeshError | None = None) -> None:
        self.batches = batches
        self.error = error
        self.closed = False

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        try:
            for _ in range(self.batches):
                yield [TOKEN]
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True


def generate(model: str = "m-1") -> adapter_service_pb2.GenerateRequest:
    return adapter_service_pb2.GenerateRequest(provider_model=model, deployment="d")


async def drain(backend: Backend, model: str = "m-1") -> None:
    async for _ in backend.chat(generate(model), NO_DEADLINE):
        pass


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"provider": "p", **labels}) or 0.0


async def test_a_call_counts_once_by_outcome_and_times_its_first_batch() -> None:
    registry = CollectorRegistry()
    backend = MeteredBackend(Scripted(), AdapterMetrics(registry), provider="p")
    await drain(backend)
    with pytest.raises(MeshError):
        await drain(
            MeteredBackend(
                Scripted(error=MeshError.of(Reason.UPSTREAM_UNAVAILABLE, "down")),
                AdapterMetrics(CollectorRegistry()),
                provider="p",
            )
        )
    ok = {"model": "m-1", "outcome": "success", "reason": ""}
    assert sample(registry, "imesh_adapter_calls_total", **ok) == 1
    assert sample(registry, "imesh_adapter_time_to_first_batch_seconds_count", model="m-1") == 1
    assert sample(registry, "imesh_adapter_call_duration_seconds_count", model="m-1") == 1
    assert sample(registry, "imesh_adapter_in_flight_calls") == 0


async def test_a_failed_call_counts_its_reason() -> None:
    registry = CollectorRegistry()
    error = MeshError.of(Reason.UPSTREAM_RATE_LIMITED, "slow down", retry_after=1)
    backend = MeteredBackend(Scripted(batches=0, error=error), AdapterMetrics(registry), "p")
    with pytest.raises(MeshError):
        await drain(backend)
    failed = {"model": "m-1", "outcome": "error", "reason": "UPSTREAM_RATE_LIMITED"}
    assert sample(registry, "imesh_adapter_calls_total", **failed) == 1
    assert sample(registry, "imesh_adapter_time_to_first_batch_seconds_count", model="m-1") == 0


async def test_closing_the_call_closes_the_inner_stream_and_counts_it_cancelled() -> None:
    registry = CollectorRegistry()
    inner = Scripted(batches=5)
    backend = MeteredBackend(inner, AdapterMetrics(registry), provider="p")
    stream = backend.chat(generate(), NO_DEADLINE)
    assert await anext(stream) == [TOKEN]
    assert sample(registry, "imesh_adapter_in_flight_calls") == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert inner.closed
    cancelled = {"model": "m-1", "outcome": "cancelled", "reason": ""}
    assert sample(registry, "imesh_adapter_calls_total", **cancelled) == 1
    assert sample(registry, "imesh_adapter_in_flight_calls") == 0


async def test_model_labels_are_capped() -> None:
    registry = CollectorRegistry()
    backend = MeteredBackend(Scripted(batches=1), AdapterMetrics(registry), provider="p")
    await asyncio.gather(*(drain(backend, f"model-{i}") for i in range(MAX_MODELS + 10)))
    other = {"model": "other", "outcome": "success", "reason": ""}
    assert sample(registry, "imesh_adapter_calls_total", **other) == 10
