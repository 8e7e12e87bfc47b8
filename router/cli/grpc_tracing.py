"""A SERVER span for every gRPC call a grpc.aio server handles, continuing the caller's W3C
trace context from the call's metadata.

opentelemetry-instrumentation-grpc's own aio server interceptor assumes every
response-streaming handler is an async generator; the router's ChatStream writes with
`context.write` (so a cancelled call interrupts it wherever it waits) and would fail under
it. This interceptor serves both styles. The client side keeps the instrumentation's
interceptor, which injects `traceparent` into outgoing metadata.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter

# Probes and reflection say nothing about requests, and would be most of the spans.
_UNTRACED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

_Metadata = Sequence[tuple[str, str | bytes]]
if TYPE_CHECKING:  # generic in the stubs only
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class _MetadataGetter(Getter[_Metadata]):
    def get(self, carrier: _Metadata, key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: _Metadata) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


class TracingServerInterceptor(_ServerInterceptor):
    """Wraps each traced method's handler in a span named after the method; the span is
    current while the handler runs, so what it calls (backends, outgoing gRPC and HTTP)
    hangs under it."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self._tracer = provider.get_tracer("imesh.grpc")

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_UNTRACED_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming methods: none in this mesh

    @contextmanager
    def _span(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[None]:
        metadata: _Metadata = tuple(context.invocation_metadata() or ())
        parent = propagate.extract(metadata, getter=_GETTER)
        service, _, name = method.lstrip("/").partition("/")
        with self._tracer.start_as_current_span(
            method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        ):
            yield

    def _unary(self, behavior: Any, method: str) -> Any:
        @functools.wraps(behavior)
        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with self._span(method, context):
                return await behavior(request, context)

        return traced

    def _streaming(self, behavior: Any, method: str) -> Any:
        if inspect.isasyncgenfunction(behavior):

            async def traced_gen(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                with self._span(method, context):
                    async for response in behavior(request, context):
                        yield response

            return traced_gen

        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with self._span(method, context):
                return await behavior(request, context)

        return traced
