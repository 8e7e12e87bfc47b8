"""Wrapping a grpc.aio method handler's behaviour in a context manager, for the server
interceptors that measure or trace every call (router/cli/grpc_metrics.py,
router/cli/grpc_tracing.py). `WrappedHandlers` wraps each method's handler once.

A behaviour is a coroutine function (unary answers, and streams written with
`context.write`, as the router's ChatStream does) or an async generator function (streams
that yield); the wrapper keeps its style, and the context manager spans the whole call,
a stream until its end.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final

import grpc

if TYPE_CHECKING:  # generic in the stubs only
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]

# Probes and reflection say nothing about requests: neither measured nor traced.
UNOBSERVED_PREFIXES: Final = ("/grpc.health.v1.", "/grpc.reflection.")

Around = Callable[["Context"], AbstractContextManager[object]]


def observed(method: str) -> bool:
    """Whether calls of `method` ("/package.Service/Method") are measured and traced."""
    return not method.startswith(UNOBSERVED_PREFIXES)


class WrappedHandlers:
    """Each observed method's handler, wrapped once with `around_for(method)`: wrapping costs
    about 7 us, and grpc hands an interceptor the same handler object call after call. An
    interceptor asks `wrapped(method, handler)` on every call; methods that are not
    observed get their handler back as given."""

    def __init__(self, around_for: Callable[[str], Around]) -> None:
        self._around_for = around_for
        # method -> (its handler, that handler wrapped). Methods are those of the
        # registered services (an unknown method never reaches an interceptor): bounded.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def wrapped(self, method: str, handler: Handler) -> Handler:
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if handler is None or not observed(method):  # None: grpc answers UNIMPLEMENTED
            return handler
        wrapped = wrap_handler(handler, self._around_for(method))
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def wrap_handler(handler: Handler, around: Around) -> Handler:
    """`handler` with its behaviour run inside `around(context)`. Unary-unary and
    unary-stream handlers are wrapped; the other kinds (none in this mesh) pass as given."""
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrapped(handler.unary_unary, around),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrapped(handler.unary_stream, around),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _wrapped(behavior: Any, around: Around) -> Any:
    if inspect.isasyncgenfunction(behavior):

        @functools.wraps(behavior)
        async def wrapped_gen(request: Any, context: Context) -> AsyncIterator[Any]:
            with around(context):
                async for response in behavior(request, context):
                    yield response

        return wrapped_gen

    @functools.wraps(behavior)
    async def wrapped(request: Any, context: Context) -> Any:
        with around(context):
            return await behavior(request, context)

    return wrapped
