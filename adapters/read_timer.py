"""ReadTimer: one timer for a whole upstream call, armed only while the call awaits bytes.

An `asyncio.Timeout` cannot span a `yield`: it cancels the task that entered it, and the
router hands a backend's stream from the attempt task to the request task between batches.
So a call gets one `loop.call_at` handle (rescheduled once, when output begins). When it
fires during a read it cancels the task doing that read, and the read raises TimeoutError;
when it fires between reads, the next read raises TimeoutError without waiting.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class ReadTimer:
    """Lifecycle: built when the call starts (`when` on the loop's clock, None: never),
    `with timer:` around each await of the upstream, `reschedule()` to move it, `cancel()`
    when the call ends."""

    __slots__ = ("_cancelled_task", "_handle", "_loop", "_reader", "expired")

    def __init__(self, when: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[object] | None = None
        self._cancelled_task: asyncio.Task[object] | None = None
        self.expired = False
        self.reschedule(when)

    def reschedule(self, when: float | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.expired = False
        if when is not None:
            self._handle = self._loop.call_at(when, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self.expired = True
        if self._reader is not None:
            self._cancelled_task = self._reader
            self._reader.cancel()

    def __enter__(self) -> None:
        if self.expired:
            raise TimeoutError
        self._reader = asyncio.current_task()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._reader = None
        task, self._cancelled_task = self._cancelled_task, None
        # Our cancel, and nobody else's: the read timed out. A cancel from elsewhere (the
        # caller closing the call) stays a cancel.
        if task is not None and task.uncancel() == 0 and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
