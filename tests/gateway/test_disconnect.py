"""A caller hanging up cancels its handler: through the ConnectionWatch the edge's protocol
puts in the scope (no task per request), or, under other servers, a watcher task."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.app import create_app
from gateway.disconnect import EXTENSION, ConnectionWatch, DisconnectWatch, watch_caller
from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from tests.gateway.conftest import build_router, mesh_config, wait_until


async def _never() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _sleep_watched(watch: ConnectionWatch, started: asyncio.Event) -> str:
    watch.arm()
    started.set()
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        return "absorbed" if watch.absorb_cancel() else "raised"
    return "slept"


async def test_a_lost_connection_cancels_the_armed_handler_and_the_cancel_is_absorbed() -> None:
    watch = ConnectionWatch()
    started = asyncio.Event()
    task = asyncio.create_task(_sleep_watched(watch, started))
    await started.wait()
    watch.fire()
    assert await task == "absorbed"
    assert not task.cancelled()


async def test_arming_after_the_connection_was_lost_cancels_at_once() -> None:
    watch = ConnectionWatch()
    watch.fire()
    assert await asyncio.create_task(_sleep_watched(watch, asyncio.Event())) == "absorbed"


async def test_a_stopped_watch_cancels_nothing() -> None:
    watch = ConnectionWatch()

    async def stopped() -> bool:
        watch.arm()
        watch.stop()
        watch.fire()
        await asyncio.sleep(0.01)
        return watch.absorb_cancel()

    assert await asyncio.create_task(stopped()) is False


async def test_a_cancel_not_caused_by_the_caller_is_not_absorbed() -> None:
    watch = ConnectionWatch()
    started = asyncio.Event()
    task = asyncio.create_task(_sleep_watched(watch, started))
    await started.wait()
    task.cancel()  # e.g. server shutdown
    assert await task == "raised"


async def test_watch_caller_uses_the_scope_extension_else_falls_back_to_a_task() -> None:
    watch = ConnectionWatch()
    with_extension = watch_caller({"extensions": {EXTENSION: {"watch": watch}}}, _never)
    assert with_extension is watch
    watch.stop()
    fallback = watch_caller({"type": "http"}, _never)
    assert isinstance(fallback, DisconnectWatch)
    fallback.stop()


async def test_the_edge_protocol_puts_a_watch_in_the_scope_and_fires_it_on_hang_up() -> None:
    seen: list[ConnectionWatch] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append(scope["extensions"][EXTENSION]["watch"])
            await asyncio.sleep(10)  # never answers: the caller hangs up

    server = GatewayServer(app, "127.0.0.1:0", GatewaySettings(), graceful_s=0)
    await server.start()
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        await wait_until(lambda: len(seen) == 1)
        assert not seen[0].lost
        writer.close()
        await wait_until(lambda: seen[0].lost)
    finally:
        await server.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_without_the_extension_a_disconnect_message_still_cancels_the_upstream(
    stream: bool,
) -> None:
    """Another ASGI server: no ConnectionWatch in the scope, only `http.disconnect`."""
    config = mesh_config()
    router, backends, _ = build_router(config)
    app = create_app(router, config.gateway)
    body = json.dumps(
        {"model": "sim-stall", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    ).encode()
    backend = backends["sim-stall"]
    sent: list[Message] = []
    messages: asyncio.Queue[Message] = asyncio.Queue()
    messages.put_nowait({"type": "http.request", "body": body, "more_body": False})

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    task = asyncio.create_task(app(scope, messages.get, send))
    try:
        await wait_until(lambda: backend.calls_started == 1)
        messages.put_nowait({"type": "http.disconnect"})
        await wait_until(lambda: backend.calls_cancelled == 1)
        await asyncio.wait_for(task, 5)
        bodies = [m for m in sent if m["type"] == "http.response.body"]
        assert all(m.get("more_body") for m in bodies)  # no answer was completed
    finally:
        task.cancel()
        await router.aclose()
