"""A backend stream that fails (or is interrupted) while closing still ends its attempt:
the breaker permit, the deployment's in-flight count, the router's concurrency slot and
the request's settle all come back, and the attempt's usage is recorded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from imesh.api import CallContext
from imesh.v1 import adapter_service_pb2, events_pb2
from router.recorder import Outcome
from router.service import ChatRouter
from tests.reliability.mesh_fakes import (
    Mesh,
    RecordCollector,
    Script,
    ScriptedBackend,
    make_mesh,
    mesh_config,
    other_tasks,
    user_input,
)


class CloseRaises(Backend):
    """Streams tokens with a pause between them; its cleanup raises."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        try:
            for _ in range(100):
                yield [events_pb2.ChatEvent(content=events_pb2.ContentDelta(text="tok"))]
                await asyncio.sleep(0.01)
        finally:
            self.closed.set()
            raise RuntimeError("connection reset while closing")


def _nothing_held(mesh: Mesh) -> None:
    router = mesh.router
    assert router.limiter.in_flight == 0
    assert all(router.stats[name].in_flight == 0 for name in router.stats)
    assert all(b.available() for b in router.breakers.values())
    assert len(mesh.sink.requests) == 1  # settled


async def test_a_stream_whose_close_raises_still_releases_and_records_everything() -> None:
    sink = RecordCollector()
    backends: dict[str, Backend] = {"p-a": CloseRaises(), "p-b": ScriptedBackend()}
    backends["p-c"] = ScriptedBackend()
    mesh = Mesh(ChatRouter(mesh_config(), backends, sinks=[sink]), {}, sink)
    stream = mesh.router.chat_stream(user_input("dep-a"), CallContext())
    assert (await anext(stream)).HasField("start")
    assert (await anext(stream)).HasField("content")
    with contextlib.suppress(RuntimeError):
        await stream.aclose()
    _nothing_held(mesh)
    [record] = mesh.sink.records
    assert record.outcome is Outcome.CANCELLED
    assert record.usage.completion_tokens >= 1  # what was produced is still accounted
    assert other_tasks() == []


async def test_a_second_cancel_while_closing_still_releases_and_records_everything() -> None:
    # The caller lets go between two batches; closing the upstream takes 0.5 s, and the
    # closing task is cancelled again meanwhile.
    mesh = make_mesh({"dep-a": [Script(tokens=["a"] * 100, gap=0.01, close_delay=0.5)]})
    stream = mesh.router.chat_stream(user_input("dep-a"), CallContext())
    assert (await anext(stream)).HasField("start")
    assert (await anext(stream)).HasField("content")
    closing = asyncio.create_task(stream.aclose())
    await asyncio.sleep(0.1)  # inside the backend's slow close
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    _nothing_held(mesh)
    [record] = mesh.sink.records
    assert record.outcome is Outcome.CANCELLED
    assert record.usage.completion_tokens >= 1
