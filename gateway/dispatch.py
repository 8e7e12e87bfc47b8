"""The edge as one raw ASGI app: a path -> route table, the lifespan, telemetry, the 500.

This is the whole stack between uvicorn and a handler, on purpose: no middleware layers
each wrapping `send` in a closure. A request costs one dict lookup (plus a prefix test for
`/v1/models/{id}`), one Exchange, and, with metrics on, one figures object picked when the
app was built. Anything unrouted goes to the fallback handler (OpenAI-style 404/405). An
unexpected exception becomes an opaque 500 (never its text) while the response has not
started; after that the server ends the connection.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from gateway.errors import log_unexpected
from gateway.metrics import EdgeMetrics, EdgeTracer, RouteFigures, route_label
from gateway.responses import Exchange, malformed_key, send_error

Handler = Callable[[Exchange, Scope, Receive, Send], Awaitable[None]]
_GET = ("GET", "HEAD")  # as Starlette routes GET: HEAD answers alike (uvicorn drops the body)


@dataclass(frozen=True, slots=True)
class EdgeRoute:
    """One path's handlers by method. `checks_key`: a malformed API key is refused (401)
    before the handler runs (everything but `/metrics`)."""

    handlers: Mapping[str, Handler]
    checks_key: bool = True

    @classmethod
    def get(cls, handler: Handler, *, checks_key: bool = True) -> EdgeRoute:
        return cls(dict.fromkeys(_GET, handler), checks_key)

    @classmethod
    def post(cls, handler: Handler) -> EdgeRoute:
        return cls({"POST": handler})


@dataclass(frozen=True, slots=True)
class _Entry:
    route: EdgeRoute
    label: str  # the metrics' and spans' route label (gateway.metrics.route_label)
    figures: RouteFigures | None


_NOWHERE = EdgeRoute({})


class EdgeApp:
    """The ASGI app: `routes` by exact path, `prefixed` for paths under a prefix (the
    longest matching prefix wins), `fallback` for the rest and for a known path's other
    methods. `on_shutdown` runs at the lifespan's end."""

    def __init__(
        self,
        routes: Mapping[str, EdgeRoute],
        prefixed: Mapping[str, EdgeRoute],
        fallback: Handler,
        *,
        metrics: EdgeMetrics | None = None,
        tracer: EdgeTracer | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        def entry(path: str, route: EdgeRoute) -> _Entry:
            label = route_label(path)
            return _Entry(route, label, None if metrics is None else metrics.route(label))

        self._exact = {path: entry(path, route) for path, route in routes.items()}
        self._prefixed = tuple(
            (prefix, entry(prefix, route))
            for prefix, route in sorted(prefixed.items(), key=lambda item: -len(item[0]))
        )
        self._unrouted = entry("", _NOWHERE)
        self._fallback = fallback
        self._metrics = metrics
        self._tracer = tracer
        self._on_shutdown = on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        entry = self._exact.get(path)
        if entry is None:
            entry = self._unrouted
            for prefix, candidate in self._prefixed:
                if path.startswith(prefix):
                    entry = candidate
                    break
        route = entry.route
        handler = route.handlers.get(scope["method"])
        checks_key = True
        if handler is None:
            handler = self._fallback
        else:
            checks_key = route.checks_key
        ex = Exchange.begin(scope)
        metrics = self._metrics
        if metrics is None and self._tracer is None:
            await _serve(handler, checks_key, ex, scope, receive, send)
            return
        if metrics is not None:
            metrics.in_flight += 1
        try:
            if self._tracer is None:
                await _serve(handler, checks_key, ex, scope, receive, send)
            else:
                with self._tracer.span(scope, entry.label) as span:
                    try:
                        await _serve(handler, checks_key, ex, scope, receive, send)
                    finally:
                        self._tracer.end(span, ex.status)
        finally:
            if metrics is not None:
                metrics.in_flight -= 1
                assert entry.figures is not None
                # 499: the caller left before any response (nginx's convention).
                entry.figures.observe(ex.status or 499, time.perf_counter() - ex.t0)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            if self._on_shutdown is not None:
                await self._on_shutdown()
        except BaseException:
            await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.shutdown.complete"})


async def _serve(
    handler: Handler, checks_key: bool, ex: Exchange, scope: Scope, receive: Receive, send: Send
) -> None:
    try:
        if checks_key and ex.bad_key:
            await send_error(send, ex, malformed_key())
            return
        await handler(ex, scope, receive, send)
    except Exception as exc:
        log_unexpected(exc)
        if not ex.started:
            await send_error(send, ex, exc)
