"""Overload: hundreds of clients, cancelled at random moments, against a fast local mock
behind a real openai_compatible backend. The mesh sheds load; it never leaks a connection
and never opens the breaker of a healthy deployment."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from httpx_aiohttp import AiohttpTransport

from adapters.http_backend import HttpBackend
from adapters.registry import build_backends
from imesh.api import CallContext
from imesh.errors import MeshError, Reason
from router.breaker import BreakerState
from router.config import parse_config
from router.service import ChatRouter
from tests.reliability.mesh_fakes import RecordCollector, user_input

CLIENTS = 300
RUN_S = 3.0
MAX_CONNECTIONS = 20
_TCP_CLOSE_WAIT = "08"
# What a shed request ends with: its one attempt was OVERLOADED (or the router refused it).
_SHED = {Reason.OVERLOADED.value, Reason.ALL_ATTEMPTS_FAILED.value}
_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":" hi"},"finish_reason":null}]}\n\n'
_END = (
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":20}}\n\ndata: [DONE]\n\n'
)


async def _stream(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for k in range(20):
        await response.write(_CHUNK)
        if k % 5 == 4:
            await asyncio.sleep(0.002)  # a fast model, with reads to be cancelled in between
    await response.write(_END)
    await response.write_eof()
    return response


@contextlib.asynccontextmanager
async def fast_mock() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


def close_wait_sockets(port: int) -> int:
    """Sockets to `port` the peer closed and we never did (this process's namespace)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == _TCP_CLOSE_WAIT:
                count += 1
    return count


def busy_pooled_connections(backend: HttpBackend) -> int:
    """Connections the HTTP client's pool counts as in use (internals: no public count)."""
    transport = backend._http.transport
    if isinstance(transport, AiohttpTransport):
        assert transport.client is not None
        return len(transport.client.connector._acquired)  # type: ignore[union-attr]
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    return sum(not c.is_idle() for c in transport._pool.connections)


# HTTP/1.1 providers go through aiohttp; "http2" ones through httpx's own transport (over
# http:// it speaks HTTP/1.1 too, so this exercises httpcore's pool under the same load).
@pytest.mark.slow
@pytest.mark.parametrize("http2", [False, True], ids=["aiohttp", "httpcore"])
async def test_overload_with_random_cancels_leaks_nothing_and_opens_no_breaker(
    http2: bool,
) -> None:
    async with fast_mock() as port:
        config = parse_config(
            {
                "providers": {
                    "mock": {
                        "kind": "openai_compatible",
                        "base_url": f"http://127.0.0.1:{port}/v1",
                        "max_connections": MAX_CONNECTIONS,
                        "proxy": "direct",
                        "http2": http2,
                        # Generous bounds: this test loads the machine, and only a
                        # pool wait may fail a call here (after `pool`).
                        "timeouts": {"connect": 10, "read": 20, "first_byte": 20, "pool": 0.2},
                    }
                },
                "deployments": [{"name": "dep-m", "provider": "mock", "model": "m"}],
            }
        )
        backends = build_backends(config.providers)
        backend = backends["mock"]
        assert isinstance(backend, HttpBackend)
        sink = RecordCollector()
        router = ChatRouter(config, backends, sinks=[sink], rng=random.Random(3))
        rng = random.Random(11)
        outcomes: dict[str, int] = {}
        stop_at = time.monotonic() + RUN_S

        async def one() -> None:
            async for _ in router.chat_stream(user_input("dep-m"), CallContext(timeout=30.0)):
                pass

        async def client() -> None:
            while time.monotonic() < stop_at:
                task = asyncio.create_task(one())
                # A third of the calls are cancelled at a random moment: before the
                # request goes out, while it waits for a connection, or mid-stream.
                # Half of those are cancelled again while they unwind (a caller giving up
                # as the router closes a hedge, a drain on shutdown).
                if rng.random() < 0.33:
                    await asyncio.sleep(rng.uniform(0, 0.02))
                    task.cancel()
                    if rng.random() < 0.5:
                        await asyncio.sleep(rng.uniform(0, 0.002))
                        task.cancel()
                try:
                    await task
                    key = "ok"
                except asyncio.CancelledError:
                    key = "cancelled"
                except MeshError as err:
                    key = err.reason.value
                outcomes[key] = outcomes.get(key, 0) + 1

        try:
            # The pool's connections first: aiohttp counts opening a connection inside the
            # pool bound, and 300 callers starting in one loop turn can delay the loop past
            # it before a connect completes. The load below is what is tested.
            await asyncio.gather(*(one() for _ in range(MAX_CONNECTIONS)))
            await asyncio.gather(*(client() for _ in range(CLIENTS)))
            # Closes of cancelled calls finish in their own tasks: give them time (bounded;
            # a leaked connection stays busy for good, so this wait never hides one).
            for _ in range(100):  # up to 5 s
                if not (backend.gate.in_flight or busy_pooled_connections(backend)):
                    break
                await asyncio.sleep(0.05)

            assert outcomes.get("ok", 0) > 0, outcomes
            assert outcomes.get("cancelled", 0) > 0, outcomes
            attempt_errors = {r.error.reason.value for r in sink.records if r.error}
            # Waiting for a connection is the mesh's own queue: OVERLOADED, never a timeout
            # and never a verdict on the deployment.
            assert attempt_errors <= {Reason.OVERLOADED.value}, attempt_errors
            assert router.breakers["dep-m"].state is BreakerState.CLOSED, attempt_errors
            assert set(outcomes) <= {"ok", "cancelled", *_SHED}, outcomes
            assert backend.gate.in_flight == 0
            assert busy_pooled_connections(backend) == 0
            assert close_wait_sockets(port) == 0

            started = time.monotonic()
            events = [e async for e in router.chat_stream(user_input("dep-m"), CallContext())]
            # A leaked pool made every later call wait out the pool timeout, then fail.
            assert time.monotonic() - started < 2.0
            assert [e.content.text for e in events if e.HasField("content")] == [" hi"] * 20
        finally:
            await router.aclose()
