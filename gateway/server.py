"""Serving the edge on uvicorn (uvloop, httptools): embedded in a running loop, or standalone.

Embedded (`imesh up`): `serve_gateway` runs uvicorn on the caller's event loop until
cancelled, calling the router in-process; the process keeps its own signal handling.
Standalone (`imesh gateway`): the CLI starts N uvicorn workers (router.cli.gateway); each
builds one `imesh.Client` (one gRPC channel) in its app factory and closes it at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.http_limits import bounded_protocol
from gateway.metrics import NO_OBSERVABILITY, EdgeObservability
from gateway.settings import GatewaySettings, parse_listen
from imesh.api import ChatAPI, UsageAPI

# Seconds shutdown waits for in-flight responses (streams) before cancelling them.
GRACEFUL_S = 10
# uvicorn's proxy-headers middleware (on by default) rewrites each request's client address
# and scheme from X-Forwarded-For/-Proto. The edge reads neither (keys authenticate callers,
# not addresses; no URL is built from the scheme), so it stays off: one ASGI layer and a
# header scan less per request. Turn it on only if something starts reading scope["client"].
PROXY_HEADERS = False


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal capture (the embedding process owns SIGINT/SIGTERM)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class GatewayServer:
    """The edge serving on the current event loop. `start()`, then `stop()` (or `wait()`)."""

    def __init__(
        self,
        app: ASGIApp,
        listen: str,
        settings: GatewaySettings | None = None,
        graceful_s: int = GRACEFUL_S,
    ) -> None:
        host, port = parse_listen(listen)
        settings = settings or GatewaySettings()
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="none",  # serve on the caller's loop (uvloop when the CLI installed it)
            http=bounded_protocol(settings.max_header_bytes, settings.max_headers),
            ws="none",
            lifespan="on",
            proxy_headers=PROXY_HEADERS,
            log_config=None,  # embedded: leave the process's logging alone
            access_log=False,  # no per-request logging on the hot path
            timeout_graceful_shutdown=graceful_s,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None
        self._listen = listen

    async def start(self) -> None:
        """Bind and start serving; raises OSError when the address cannot be used."""
        self._task = asyncio.get_running_loop().create_task(self._serve())
        ready = asyncio.ensure_future(self._server.ready.wait())
        await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._task.done():
            self._task.result()
            raise OSError(f"gateway stopped during startup on {self._listen}")

    @property
    def port(self) -> int:
        """The bound port (useful after listening on port 0)."""
        sockets = self._server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    async def wait(self) -> None:
        """Until the server stops."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop accepting, let in-flight responses finish (bounded), run app shutdown."""
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit:
            # uvicorn exits the process when it cannot bind; embedded, that is an error.
            raise OSError(f"gateway cannot listen on {self._listen}") from None


async def start_gateway(
    api: ChatAPI,
    settings: GatewaySettings,
    listen: str,
    observability: EdgeObservability = NO_OBSERVABILITY,
    usage: UsageAPI | None = None,
) -> GatewayServer:
    """The edge over `api`, serving on `listen` (port 0 picks a free port) in this loop;
    `GET /v1/usage` answers from `usage` (None: the mesh runs without tenancy)."""
    app = create_app(api, settings, observability=observability, usage=usage)
    server = GatewayServer(app, listen, settings)
    await server.start()
    return server


async def serve_gateway(api: ChatAPI, settings: GatewaySettings, listen: str) -> None:
    """Serve the edge in the current loop until cancelled; `api` stays the caller's to close."""
    server = await start_gateway(api, settings, listen)
    try:
        await server.wait()
    finally:
        await server.stop()
