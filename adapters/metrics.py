"""The adapter service's metrics: a Backend that measures the Backend it wraps.

Updated once per call and once at its first batch, never per event: calls by outcome and
reason, call duration, time to the first batch, and the calls in flight. Labels are the
provider this service serves and the provider model, capped at MAX_MODELS distinct values
(the rest count as "other") so a caller naming models cannot grow the series.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from imesh.errors import MeshError
from imesh.v1 import adapter_service_pb2

MAX_MODELS = 32
OTHER = "other"
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class AdapterMetrics:
    """The families, registered once per process on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "imesh_adapter_calls",
            "Calls the adapter service ran, by outcome (success, error, cancelled) and reason.",
            ("provider", "model", "outcome", "reason"),
            registry=registry,
        )
        self.duration = Histogram(
            "imesh_adapter_call_duration_seconds",
            "Time from a call's start to its end (the whole stream).",
            ("provider", "model"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "imesh_adapter_time_to_first_batch_seconds",
            "Time from a call's start to the first batch its provider delivered.",
            ("provider", "model"),
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "imesh_adapter_in_flight_calls",
            "Calls the adapter service is running now.",
            ("provider",),
            registry=registry,
        )


class _Series:
    """The children of one (provider, model) pair, made once."""

    __slots__ = ("duration", "ttft")

    def __init__(self, metrics: AdapterMetrics, provider: str, model: str) -> None:
        self.duration = metrics.duration.labels(provider, model)
        self.ttft = metrics.ttft.labels(provider, model)


class MeteredBackend(Backend):
    """Wraps `inner` (which it then owns: `aclose()` closes it) and measures every call.

    `chat` stays a generator over the inner stream on purpose. Counting a call by outcome
    and reason needs to see how its stream ended (exhausted, raised which error, closed
    early), and only code on the iteration path sees that: an iterator handing out the
    inner stream's own awaitables would miss the end, and a class with `__anext__` costs
    as much as the generator. The other place is AdapterServicer's loop, which would then
    know about metrics. The layer costs about 0.1 µs per batch against iterating the inner
    stream directly (uvloop, 200k batches), once per upstream read rather than per token,
    beside the gRPC message each batch becomes."""

    def __init__(self, inner: Backend, metrics: AdapterMetrics, provider: str) -> None:
        self._inner = inner
        self._metrics = metrics
        self._provider = provider
        self._in_flight = metrics.in_flight.labels(provider)
        self._series: dict[str, _Series] = {}
        self._outcomes: dict[tuple[str, str, str], Any] = {}

    def _model(self, model: str) -> str:
        if model in self._series or len(self._series) < MAX_MODELS:
            return model
        return OTHER

    def _series_of(self, model: str) -> _Series:
        series = self._series.get(model)
        if series is None:
            series = self._series[model] = _Series(self._metrics, self._provider, model)
        return series

    def _count(self, model: str, outcome: str, reason: str) -> None:
        key = (model, outcome, reason)
        counter = self._outcomes.get(key)
        if counter is None:
            counter = self._outcomes[key] = self._metrics.calls.labels(
                self._provider, model, outcome, reason
            )
        counter.inc()

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        model = self._model(request.provider_model)
        series = self._series_of(model)
        started = time.perf_counter()
        first = True
        outcome, reason = "cancelled", ""
        self._in_flight.inc()
        batches = self._inner.chat(request, deadline)
        try:
            async for batch in batches:
                if first:
                    first = False
                    series.ttft.observe(time.perf_counter() - started)
                yield batch
            outcome = "success"
        except MeshError as exc:
            outcome, reason = "error", str(exc.reason)
            raise
        except Exception:
            outcome, reason = "error", "crashed"
            raise
        finally:
            # Closing this iterator must close the inner one (and its upstream call) at
            # once, not when the garbage collector gets to it.
            aclose = getattr(batches, "aclose", None)
            try:
                if aclose is not None:
                    await aclose()
            finally:
                self._in_flight.dec()
                series.duration.observe(time.perf_counter() - started)
                self._count(model, outcome, reason)

    async def aclose(self) -> None:
        await self._inner.aclose()
