"""RED metrics for every gRPC service of a process: calls by method and status code, and
how long they took (a stream: until its end), from a grpc.aio server interceptor.

One dictionary update and one bucket increment per call, kept as plain numbers and
rendered when Prometheus scrapes; the calls and the scrape share the event loop. Methods
are those of the registered services (an unknown method never reaches an interceptor),
so the labels stay bounded. Probes (grpc.health) are left out.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gateway.loop_histogram import LoopHistogram

_UNMEASURED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

if TYPE_CHECKING:  # generic in the stubs only
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _Context = grpc.aio.ServicerContext[Any, Any]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class GrpcServerMetrics(_ServerInterceptor, Collector):
    """Lifecycle: one per process, registered on its registry; `instrument_servers_with`
    puts it in every grpc.aio server built afterwards."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._handled: dict[tuple[str, str], int] = {}
        self._seconds: dict[str, LoopHistogram] = {}
        registry.register(self)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_UNMEASURED_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._measured(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._measured(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _measured(self, behavior: Any, method: str) -> Any:
        if inspect.isasyncgenfunction(behavior):

            @functools.wraps(behavior)
            async def measured_gen(request: Any, context: _Context) -> AsyncIterator[Any]:
                started = time.perf_counter()
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    self._observe(method, context, started)

            return measured_gen

        @functools.wraps(behavior)
        async def measured(request: Any, context: _Context) -> Any:
            started = time.perf_counter()
            try:
                return await behavior(request, context)
            finally:
                self._observe(method, context, started)

        return measured

    def _observe(self, method: str, context: _Context, started: float) -> None:
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
        histogram = self._seconds.get(method)
        if histogram is None:
            histogram = self._seconds[method] = LoopHistogram(BUCKETS)
        histogram.observe(seconds)

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        handled = CounterMetricFamily(
            "imesh_grpc_server_handled",
            "gRPC calls this process's services finished, by method and status code.",
            labels=("method", "code"),
        )
        for key, count in self._handled.items():
            handled.add_metric(key, count)
        yield handled
        seconds = HistogramMetricFamily(
            "imesh_grpc_server_handling_seconds",
            "Time from a call's arrival to its end (a stream's last message).",
            labels=("method",),
        )
        for method, histogram in self._seconds.items():
            seconds.add_metric((method,), histogram.cumulative(), histogram.total)
        yield seconds
