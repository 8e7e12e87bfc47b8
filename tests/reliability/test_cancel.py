"""Cancellation reaches the upstream within milliseconds; graceful stop drains, then cancels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc.aio import EOF  # type: ignore[attr-defined]

from imesh.api import CallContext
from imesh.v1 import chat_service_pb2, chat_service_pb2_grpc, events_pb2
from router.recorder import Outcome
from router.server import RouterServer, start_router_server
from tests.reliability.mesh_fakes import Mesh, Script, make_mesh, other_tasks, user_input

CLOSE_BUDGET_S = 0.1
HEDGED = {
    "h": {
        "candidates": ["dep-a", "dep-b"],
        "policy": "priority",
        "hedging": {"enabled": True, "delay_ms": 20},
    }
}


async def test_closing_the_stream_closes_the_backend_within_100ms() -> None:
    mesh = make_mesh({"dep-a": [Script(tokens=["a"] * 100, gap=0.05)]}, aliases=HEDGED)
    stream = mesh.router.chat_stream(user_input("h"), CallContext())
    assert (await anext(stream)).HasField("start")
    assert (await anext(stream)).HasField("content")
    closed_at = time.monotonic()
    await stream.aclose()
    [call] = mesh.calls()
    assert call.cancelled
    assert call.closed_at is not None
    assert call.closed_at - closed_at < CLOSE_BUDGET_S
    [record] = mesh.sink.records
    assert record.outcome is Outcome.CANCELLED
    assert record.usage.completion_tokens >= 1  # what was produced is still accounted
    assert other_tasks() == []


async def test_cancelling_the_consumer_task_closes_every_running_attempt() -> None:
    slow = [Script(ttft=10.0)]
    mesh = make_mesh({"dep-a": slow, "dep-b": slow}, aliases=HEDGED)

    async def consume() -> None:
        async for _ in mesh.router.chat_stream(user_input("h"), CallContext()):
            pass

    task = asyncio.create_task(consume())
    # Wait until the primary and its hedge are both running.
    await asyncio.wait_for(_both_started(mesh), 1)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for call in mesh.calls():
        assert call.cancelled
        assert call.closed_at is not None
        assert call.closed_at - cancelled_at < CLOSE_BUDGET_S
    assert {r.outcome for r in mesh.sink.records} == {Outcome.CANCELLED}
    # Cancelled attempts give their breaker slot back: no verdict either way.
    assert all(b.available() for b in mesh.router.breakers.values())
    assert other_tasks() == []


async def _both_started(mesh: Mesh) -> None:
    while len(mesh.calls()) < 2:  # noqa: ASYNC110 - the fake has no start hook to await
        await asyncio.sleep(0.005)


async def _read_all(call: Any) -> None:
    while await call.read() is not EOF:
        pass


# The generated stub types describe the sync API, not grpc.aio's: the stub is Any here.
Served = tuple[Mesh, RouterServer, Any]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    mesh = make_mesh(
        {
            "dep-a": [Script(tokens=["a"] * 1000, gap=0.02)],
            "dep-b": [Script(tokens=["quick", " reply"], gap=0.05)],
            "dep-c": [Script(tokens=["c"], stall_at=1)],
        }
    )
    server = await start_router_server(mesh.router, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(server.address)
    try:
        stub: Any = chat_service_pb2_grpc.ChatServiceStub(channel)
        yield mesh, server, stub
    finally:
        await channel.close(None)
        await server.stop(0)


async def test_graceful_stop_returns_once_cancelled_streams_closed_upstream_and_recorded() -> None:
    # Closing this upstream takes a while (an HTTP teardown): stop() must not return, and
    # let the process close backends and exit, while cancelled streams are still unwinding.
    mesh = make_mesh({"dep-c": [Script(tokens=["c"], stall_at=1, close_delay=0.3)]})
    server = await start_router_server(mesh.router, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub: Any = chat_service_pb2_grpc.ChatServiceStub(channel)
            stalled = stub.ChatStream(chat_service_pb2.ChatStreamRequest(input=user_input("dep-c")))
            assert (await stalled.read()).events[0].HasField("start")
            await server.stop(drain_s=0.05)
            [upstream] = mesh.calls()
            assert upstream.cancelled
            assert upstream.closed.is_set()
            [record] = mesh.sink.records
            assert record.outcome is Outcome.CANCELLED
    finally:
        await server.stop(0)


async def test_grpc_client_cancel_closes_the_backend_within_100ms(
    served: Served,
) -> None:
    mesh, _, stub = served
    call = stub.ChatStream(chat_service_pb2.ChatStreamRequest(input=user_input("dep-a")))
    first = await call.read()
    assert isinstance(first, chat_service_pb2.ChatStreamResponse)
    assert first.events[0].HasField("start")
    cancelled_at = time.monotonic()
    call.cancel()
    upstream = mesh.backend("dep-a").calls[0]
    await asyncio.wait_for(upstream.closed.wait(), CLOSE_BUDGET_S * 5)
    assert upstream.cancelled
    assert upstream.closed_at is not None
    assert upstream.closed_at - cancelled_at < CLOSE_BUDGET_S


async def test_graceful_stop_drains_a_finishing_stream_and_cancels_a_stalled_one(
    served: Served,
) -> None:
    mesh, server, stub = served
    finishing = stub.ChatStream(chat_service_pb2.ChatStreamRequest(input=user_input("dep-b")))
    stalled = stub.ChatStream(chat_service_pb2.ChatStreamRequest(input=user_input("dep-c")))
    assert (await finishing.read()).events[0].HasField("start")
    assert (await stalled.read()).events[0].HasField("start")

    stopped_at = time.monotonic()
    stop = asyncio.create_task(server.stop(drain_s=0.5))
    finishing_events: list[events_pb2.ChatEvent] = []
    while (message := await finishing.read()) is not EOF:
        assert isinstance(message, chat_service_pb2.ChatStreamResponse)
        finishing_events.extend(message.events)
    assert await finishing.code() is grpc.StatusCode.OK
    assert [e.WhichOneof("event") for e in finishing_events][-2:] == ["usage", "finish"]
    with pytest.raises(grpc.aio.AioRpcError):
        await _read_all(stalled)
    assert await stalled.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    await stop
    assert 0.5 <= time.monotonic() - stopped_at < 0.5 + 0.5
    upstream = mesh.backend("dep-c").calls[0]
    await asyncio.wait_for(upstream.closed.wait(), 1)
    assert upstream.cancelled
