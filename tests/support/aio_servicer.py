"""Drive a grpc.aio servicer through grpc_testing, which only calls synchronous servicers.

`sync_servicer(servicer, service, loop)` gives grpc_testing one plain method per RPC of
`service`; each runs the async method on `loop` (a LoopThread) with an `AioContext`, the
grpc.aio context surface our servicers use, backed by grpc_testing's context:
- `abort(code, details, trailing_metadata)` keeps the trailing metadata (grpc_testing's own
  abort drops it), so status details reach `termination()`;
- `write` and async-generator yields become the stream's responses;
- a cancelled test RPC cancels the servicer's task, as grpc.aio does.
No socket is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor


class Aborted(Exception):
    """The servicer ended the call with a status (its code and details are already set)."""


class LoopThread:
    """An event loop on a daemon thread: `submit(coro)` runs a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Starts `coro` as a task on the loop and returns it (from any thread)."""
        made: queue.Queue[asyncio.Task[Any]] = queue.Queue()
        self.loop.call_soon_threadsafe(lambda: made.put(self.loop.create_task(coro)))
        return made.get(timeout=5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class AioContext:
    """The grpc.aio ServicerContext calls our servicers make, over grpc_testing's context."""

    def __init__(self, context: grpc.ServicerContext, write: Callable[[Any], None]) -> None:
        self._context = context
        self._write = write

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def peer(self) -> str:
        return "test"

    async def send_initial_metadata(self, metadata: Any) -> None:
        self._context.send_initial_metadata(metadata)

    async def write(self, message: Any) -> None:
        self._write(message)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        self._context.set_trailing_metadata(trailing_metadata)
        self._context.set_code(code)
        self._context.set_details(details)
        raise Aborted


_DONE = object()


def sync_servicer(servicer: object, service: ServiceDescriptor, loop: LoopThread) -> object:
    """An object with one synchronous method per RPC of `service`, for grpc_testing."""
    methods: dict[str, Callable[..., Any]] = {}
    for method in service.methods:
        if method.client_streaming:
            raise NotImplementedError("client-streaming RPCs are not needed here")
        run = _streaming if method.server_streaming else _unary
        methods[method.name] = _bind(run, getattr(servicer, method.name), loop)
    return type("SyncServicer", (), {n: staticmethod(f) for n, f in methods.items()})()


def _bind(run: Callable[..., Any], method: Any, loop: LoopThread) -> Callable[..., Any]:
    return lambda request, context: run(method, request, context, loop)


def _start(
    method: Any,
    request: Any,
    context: grpc.ServicerContext,
    loop: LoopThread,
    out: queue.Queue[Any],
) -> asyncio.Task[Any]:
    async def drive() -> Any:
        ctx = AioContext(context, out.put)
        try:
            result = method(request, ctx)
            if inspect.isasyncgen(result):
                async with contextlib.aclosing(result):
                    async for message in result:
                        out.put(message)
                return None
            return await result
        except Aborted:
            return None
        finally:
            out.put(_DONE)

    task = loop.task(drive())

    def cancel() -> None:  # grpc_testing calls back when the RPC ends, cancelled or not
        loop.loop.call_soon_threadsafe(task.cancel)

    context.add_callback(cancel)
    return task


def _unary(method: Any, request: Any, context: grpc.ServicerContext, loop: LoopThread) -> Any:
    out: queue.Queue[Any] = queue.Queue()
    task = _start(method, request, context, loop, out)
    while out.get() is not _DONE:
        pass
    return None if task.cancelled() else task.result()


def _streaming(
    method: Any, request: Any, context: grpc.ServicerContext, loop: LoopThread
) -> Iterator[Any]:
    out: queue.Queue[Any] = queue.Queue()
    _start(method, request, context, loop, out)
    while (message := out.get()) is not _DONE:
        yield message


def status_error(trailing_metadata: Any, code: grpc.StatusCode, details: str) -> Any:
    """The MeshError a client would rebuild from this termination (status details read)."""
    from google.rpc import status_pb2

    from imesh.errors import MeshError

    raw = dict(trailing_metadata or ()).get("grpc-status-details-bin")
    status = status_pb2.Status.FromString(raw) if raw else None
    return MeshError.from_status(code, details, status)
