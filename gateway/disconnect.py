"""Telling a handler that its caller went away, so it can cancel the call upstream.

The edge's uvicorn protocol (gateway.http_limits) puts one `ConnectionWatch` per connection
in the ASGI scope (`scope["extensions"][EXTENSION]["watch"]`) and fires it from `connection_lost`:
the handler's task is cancelled right there, with no task or future of its own per request.
Under another ASGI server (or an in-process test transport) `watch_caller` falls back to
`DisconnectWatch`, a task that waits for `http.disconnect` on `receive`.

Lifecycle, either way: `watch = watch_caller(scope, receive)` after the request body has
been read; `watch.stop()` before the final send (the response's end is no disconnect);
after a CancelledError, `watch.absorb_cancel()` tells a caller that left (True, the cancel
undone) from a cancel of the server's own (False: re-raise it).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from starlette.types import Receive, Scope

EXTENSION = "imesh.connection_watch"


class CallerWatch(Protocol):
    """What a handler holds while its caller may still hang up."""

    def stop(self) -> None: ...

    def absorb_cancel(self) -> bool: ...


class ConnectionWatch:
    """One HTTP connection's end, as seen by its protocol. At most one handler watches at
    a time (HTTP/1.1 answers one request after another); a handler that arms it after the
    connection was lost is cancelled at once."""

    __slots__ = ("_task", "gone", "lost")

    def __init__(self) -> None:
        self._task: asyncio.Task[object] | None = None
        self.lost = False  # the connection is gone
        self.gone = False  # ... and that cancelled the watching handler

    def arm(self) -> ConnectionWatch:
        """Cancel the current task when the connection is lost, until `stop()`."""
        task = asyncio.current_task()
        assert task is not None, "ConnectionWatch.arm needs a running task"
        self._task = task
        if self.lost:
            self._cancel()
        return self

    def fire(self) -> None:
        """Called by the protocol when the connection is lost."""
        self.lost = True
        if self._task is not None:
            self._cancel()

    def stop(self) -> None:
        self._task = None

    def absorb_cancel(self) -> bool:
        if not self.gone:
            return False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True

    def _cancel(self) -> None:
        task, self._task = self._task, None
        assert task is not None
        self.gone = True
        task.cancel()


class DisconnectWatch:
    """The fallback: cancels the current task when the ASGI server reports
    `http.disconnect` (a watcher task per request, reading `receive`)."""

    __slots__ = ("_task", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None, "DisconnectWatch needs a running task"
        self._task = task
        self.gone = False
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                self._task.cancel()
                return

    def stop(self) -> None:
        self._watcher.cancel()

    def absorb_cancel(self) -> bool:
        if not self.gone:
            return False
        self._task.uncancel()
        return True


def watch_caller(scope: Scope, receive: Receive) -> CallerWatch:
    """Start watching for the caller leaving (see the module docstring)."""
    try:
        watch = scope["extensions"][EXTENSION]["watch"]
    except (KeyError, TypeError):  # no extensions, None, or not this one
        return DisconnectWatch(receive)
    if type(watch) is ConnectionWatch:
        return watch.arm()
    return DisconnectWatch(receive)
