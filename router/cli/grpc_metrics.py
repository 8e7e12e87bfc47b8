"""RED metrics for every gRPC service of a process: calls by method and status code, and
how long they took (a stream: until its end), from a grpc.aio server interceptor.

One dictionary update and one bucket increment per call, kept as plain numbers and
rendered when Prometheus scrapes; the calls and the scrape share the event loop. Methods
are those of the registered services (an unknown method never reaches an interceptor),
so the labels stay bounded. Probes (grpc.health) are left out.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gateway.loop_histogram import LoopHistograms
from router.cli.grpc_handlers import observed, wrap_handler

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

if TYPE_CHECKING:  # generic in the stubs only
    from router.cli.grpc_handlers import Context, Handler

    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class GrpcServerMetrics(_ServerInterceptor, Collector):
    """Lifecycle: one per process, registered on its registry; `instrument_servers_with`
    puts it in every grpc.aio server built afterwards."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._handled: dict[tuple[str, str], int] = {}
        self._seconds = LoopHistograms(BUCKETS)
        # method -> (its handler, that handler wrapped): wrapping costs about 7 us, and a
        # method's handler is the same object call after call.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}
        registry.register(self)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not observed(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap_handler(handler, functools.partial(self._measuring, method))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    @contextmanager
    def _measuring(self, method: str, context: Context) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._observe(method, context, started)

    def _observe(self, method: str, context: Context, started: float) -> None:
        seconds = time.perf_counter() - started
        code = context.code()
        # An aborted call has its code set; one that ended by itself has none (OK), and a
        # cancelled one is CANCELLED whatever the handler saw.
        if context.cancelled():
            name = "CANCELLED"
        elif isinstance(code, grpc.StatusCode):
            name = code.name
        else:
            name = "OK"
        key = (method, name)
        self._handled[key] = self._handled.get(key, 0) + 1
        self._seconds.observe(method, seconds)

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        handled = CounterMetricFamily(
            "imesh_grpc_server_handled",
            "gRPC calls this process's services finished, by method and status code.",
            labels=("method", "code"),
        )
        for key, count in self._handled.items():
            handled.add_metric(key, count)
        yield handled
        yield self._seconds.family(
            "imesh_grpc_server_handling_seconds",
            "Time from a call's arrival to its end (a stream's last message).",
            "method",
        )
