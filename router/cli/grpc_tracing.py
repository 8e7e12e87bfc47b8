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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter

from router.cli.grpc_handlers import WrappedHandlers

_Metadata = Sequence[tuple[str, str | bytes]]
if TYPE_CHECKING:  # generic in the stubs only
    from router.cli.grpc_handlers import Context, Handler

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
        self._handlers = WrappedHandlers(self._around)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        return self._handlers.wrapped(handler_call_details.method, handler)

    def _around(self, method: str) -> Callable[[Context], AbstractContextManager[object]]:
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        return functools.partial(self._span, method, attributes)

    @contextmanager
    def _span(self, method: str, attributes: dict[str, str], context: Context) -> Iterator[None]:
        metadata: _Metadata = tuple(context.invocation_metadata() or ())
        parent = propagate.extract(metadata, getter=_GETTER)
        with self._tracer.start_as_current_span(
            method, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        ):
            yield
