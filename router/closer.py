"""Closer: the work that follows a request's answer (ending its upstream call, recording,
settling) in tasks the router owns, so the answer leaves before the bookkeeping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Closer:
    """Lifecycle: one per router. `defer(close, abandon=...)` runs `close()` in a task of
    its own, kept here until it ends; `drain()` (at the router's close) waits for every
    one, those deferred meanwhile included.

    `close` must do what it owns even when cancelled part-way (its `finally` clauses).
    `abandon` (synchronous, idempotent) runs instead when its task is cancelled before its
    first step (a loop cancelling every task at shutdown), so the same guarantees hold
    even then. A failure is logged with its traceback, never dropped.
    """

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Closings still running."""
        return len(self._tasks)

    def defer(self, close: Callable[[], Awaitable[None]], *, abandon: Callable[[], None]) -> None:
        started = False

        async def run() -> None:
            nonlocal started
            started = True
            await close()

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if task.cancelled():
                if not started:
                    abandon()
                return
            error = task.exception()
            if error is not None:
                log.error("closing a request after its answer failed", exc_info=error)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(done)

    async def drain(self) -> None:
        """Waits until every deferred closing ended (however it ended)."""
        while self._tasks:
            await asyncio.wait(tuple(self._tasks))
