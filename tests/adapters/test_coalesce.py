"""Coalescing: ready-together events share a message; the first is never held back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from adapters.coalesce import coalesce
from imesh.errors import MeshError
from imesh.v1 import events_pb2


def content(text: str) -> events_pb2.ChatEvent:
    return events_pb2.ChatEvent(content=events_pb2.ContentDelta(text=text))


class Source:
    """An event source the test feeds by hand; records when it was closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[events_pb2.ChatEvent | BaseException | None] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def events(self) -> AsyncIterator[events_pb2.ChatEvent]:
        try:
            while (item := await self.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.closed.set()


async def test_the_first_event_goes_out_at_once_even_with_a_long_window() -> None:
    source = Source()
    batches = coalesce(source.events(), window_s=10.0)
    source.queue.put_nowait(content("first"))
    started = time.monotonic()
    first = await asyncio.wait_for(anext(batches), 1)
    assert time.monotonic() - started < 0.1
    assert [e.content.text for e in first] == ["first"]
    await batches.aclose()


async def test_events_within_the_window_share_one_batch() -> None:
    source = Source()
    batches = coalesce(source.events(), window_s=0.05)
    source.queue.put_nowait(content("0"))
    assert len(await anext(batches)) == 1
    for text in ("1", "2", "3"):
        source.queue.put_nowait(content(text))
    assert [e.content.text for e in await anext(batches)] == ["1", "2", "3"]
    await batches.aclose()


async def test_a_full_batch_flushes_without_waiting_for_the_window() -> None:
    source = Source()
    batches = coalesce(source.events(), window_s=10.0, max_batch=4)
    source.queue.put_nowait(content("first"))
    await anext(batches)
    for i in range(6):
        source.queue.put_nowait(content(str(i)))
    batch = await asyncio.wait_for(anext(batches), 1)
    assert [e.content.text for e in batch] == ["0", "1", "2", "3"]
    await batches.aclose()


async def test_finish_flushes_at_once_and_ends_the_batches() -> None:
    source = Source()
    batches = coalesce(source.events(), window_s=10.0)
    source.queue.put_nowait(content("first"))
    await anext(batches)
    source.queue.put_nowait(content("x"))
    source.queue.put_nowait(events_pb2.ChatEvent(finish=events_pb2.Finish()))
    source.queue.put_nowait(None)
    batch = await asyncio.wait_for(anext(batches), 1)
    assert [e.WhichOneof("event") for e in batch] == ["content", "finish"]
    with pytest.raises(StopAsyncIteration):
        await anext(batches)


async def test_an_error_is_raised_after_the_events_before_it() -> None:
    source = Source()
    batches = coalesce(source.events(), window_s=0.0)
    failure = MeshError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERRUPTED", "cut")
    source.queue.put_nowait(content("a"))
    source.queue.put_nowait(events_pb2.ChatEvent(error=failure.to_event()))
    source.queue.put_nowait(failure)
    received: list[events_pb2.ChatEvent] = []

    async def drain() -> None:
        async for batch in batches:
            received.extend(batch)

    with pytest.raises(MeshError) as caught:
        await drain()
    assert caught.value is failure
    assert [e.WhichOneof("event") for e in received] == ["content", "error"]


async def test_closing_the_batches_closes_the_source() -> None:
    source = Source()
    batches = coalesce(source.events(), window_s=0.0)
    source.queue.put_nowait(content("a"))
    await anext(batches)
    await batches.aclose()
    assert source.closed.is_set()
