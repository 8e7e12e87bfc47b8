"""Coalescing: events that are ready together travel in one stream message, the first at once.

Shared by the router's ChatService and the adapters' AdapterService stream handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from imesh.v1 import events_pb2

# A flush every this many events bounds message size and the time a batch is held.
MAX_BATCH = 64
_TERMINAL = frozenset({"finish", "error"})


class _Done:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


async def coalesce(
    events: AsyncIterator[events_pb2.ChatEvent],
    window_s: float,
    max_batch: int = MAX_BATCH,
) -> AsyncGenerator[list[events_pb2.ChatEvent], None]:
    """Yields batches of `events` in order. The first batch goes out as soon as its first
    event exists (with whatever is ready beside it); later ones gather for up to
    `window_s` after their first event, or until `max_batch`, or until a finish/error.
    An exception from `events` is raised after the batch holding the events before it.

    A pump task reads `events` into a bounded queue, because peeking at an async iterator
    without waiting is impossible; closing this generator cancels the pump, which closes
    `events` (and so the call behind it).
    """
    queue: asyncio.Queue[events_pb2.ChatEvent | _Done] = asyncio.Queue(max_batch * 2)
    pump = asyncio.create_task(_pump(events, queue), name="coalesce-pump")
    try:
        first = True
        while True:
            item = await queue.get()
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                return
            batch = [item]
            done = _drain(queue, batch, max_batch)
            if done is None and not first and window_s > 0 and not _ends(batch):
                done = await _gather(queue, batch, max_batch, window_s)
            first = False
            yield batch
            if done is not None:
                if done.error is not None:
                    raise done.error
                return
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump


def _ends(batch: list[events_pb2.ChatEvent]) -> bool:
    return batch[-1].WhichOneof("event") in _TERMINAL


def _drain(
    queue: asyncio.Queue[events_pb2.ChatEvent | _Done],
    batch: list[events_pb2.ChatEvent],
    max_batch: int,
) -> _Done | None:
    while len(batch) < max_batch and not queue.empty():
        item = queue.get_nowait()
        if isinstance(item, _Done):
            return item
        batch.append(item)
    return None


async def _gather(
    queue: asyncio.Queue[events_pb2.ChatEvent | _Done],
    batch: list[events_pb2.ChatEvent],
    max_batch: int,
    window_s: float,
) -> _Done | None:
    try:
        async with asyncio.timeout(window_s):
            while len(batch) < max_batch and not _ends(batch):
                # Queue.get leaves the item queued when the timeout cancels it: nothing lost.
                item = await queue.get()
                if isinstance(item, _Done):
                    return item
                batch.append(item)
    except TimeoutError:
        pass
    return None


async def _pump(
    events: AsyncIterator[events_pb2.ChatEvent],
    queue: asyncio.Queue[events_pb2.ChatEvent | _Done],
) -> None:
    error: Exception | None = None
    first = True
    try:
        async for event in events:
            await queue.put(event)
            if first and event.WhichOneof("event") != "start":
                # Let the consumer send the first output now (with the start before it): a
                # burst of ready events would otherwise all be pumped before it runs.
                first = False
                await asyncio.sleep(0)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # handed to the consumer, which raises it in its task
        error = exc
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    await queue.put(_Done(error))
