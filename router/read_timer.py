"""ReadTimer: one deadline timer for all the reads of one attempt's stream, rescheduled,
never re-created per read, and not bound to one task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

from adapters.deadline import Deadline

T = TypeVar("T")


class ReadTimer:
    """Bounds the reads of one stream by a deadline that can move (first output, then the
    attempt's end).

    Unlike `asyncio.Timeout`, it is not tied to the task that armed it: an attempt's
    stream is read first by the attempt's own task, then, once it has won, by the
    request's task. When the timer fires during a read, that read is cancelled and raises
    TimeoutError; when it fires between reads (the reader is busy sending), the next read
    raises TimeoutError at once. A cancellation from anyone else stays a cancellation.

    Lifecycle: `reschedule()` to arm or move it, `read()` for every read, `cancel()` when
    the stream is done with.
    """

    __slots__ = ("_cancelled_read", "_handle", "_reader", "fired")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[object] | None = None
        self._cancelled_read = False
        self.fired = False

    def reschedule(self, deadline: Deadline) -> None:
        self.cancel()
        at = deadline.loop_at()
        if at is not None:
            self._handle = asyncio.get_running_loop().call_at(at, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    async def read(self, stream: AsyncIterator[T]) -> T:
        """The stream's next item; StopAsyncIteration at its end; TimeoutError past the
        deadline."""
        if self.fired:
            raise TimeoutError
        task = asyncio.current_task()
        assert task is not None
        self._reader = task
        self._cancelled_read = False
        cancelling = task.cancelling()
        try:
            return await anext(stream)
        except asyncio.CancelledError:
            if self._cancelled_read and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._reader = None

    def _fire(self) -> None:
        self._handle = None
        self.fired = True
        if self._reader is not None:
            self._cancelled_read = True
            self._reader.cancel()
