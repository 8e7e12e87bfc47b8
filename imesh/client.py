"""imesh.Client: the typed async client of the mesh's ChatService (and a blocking wrapper)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from imesh.api import CallContext
from imesh.errors import MeshError, Reason
from imesh.v1 import (
    chat_pb2,
    chat_service_pb2,
    chat_service_pb2_grpc,
    events_pb2,
    usage_service_pb2,
    usage_service_pb2_grpc,
)

T = TypeVar("T")
_NO_CONTEXT = CallContext()
# How long SyncClient.close() lets cancelled calls settle before it cancels what is left.
CLOSE_WAIT_S = 1.0
# Readiness checks answer fast or count as "not ready".
READY_TIMEOUT_S = 2.0
CHAT_SERVICE = chat_service_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name


def tls_credentials(
    ca: str | Path, *, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Credentials for a router that serves TLS: `ca` (PEM file) verifies its certificate;
    `cert` and `key` are this caller's own, for a router that requires mutual TLS."""
    if (cert is None) != (key is None):
        raise ValueError("cert and key go together: give both or neither")
    return grpc.ssl_channel_credentials(
        Path(ca).read_bytes(),
        Path(key).read_bytes() if key is not None else None,
        Path(cert).read_bytes() if cert is not None else None,
    )


def user(text: str) -> chat_pb2.Message:
    """A user message holding `text`."""
    return _message(chat_pb2.ROLE_USER, text)


def system(text: str) -> chat_pb2.Message:
    """A system message holding `text`."""
    return _message(chat_pb2.ROLE_SYSTEM, text)


def assistant(text: str) -> chat_pb2.Message:
    """An assistant message holding `text` (for multi-turn history)."""
    return _message(chat_pb2.ROLE_ASSISTANT, text)


def _message(role: chat_pb2.Role.ValueType, text: str) -> chat_pb2.Message:
    return chat_pb2.Message(role=role, content=[chat_pb2.ContentPart(text=text)])


class Client:
    """The mesh's ChatAPI over a gRPC channel to a router.

    Lifecycle: build once, share across tasks, `aclose()` (or `async with`) at the end.
    The channel opens lazily inside the event loop that first uses it, unless `channel`
    is given (then it is the caller's to close). `credentials` makes it a TLS channel
    (see `tls_credentials`); without them it is plaintext. `timeout` (seconds) applies to
    calls whose CallContext sets none.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
    ) -> None:
        self._target = target
        self._api_key = api_key
        self._timeout = timeout
        self._credentials = credentials
        self._channel = channel
        self._owns_channel = channel is None
        self._stub: chat_service_pb2_grpc.ChatServiceAsyncStub | None = None

    def _chat_stub(self) -> chat_service_pb2_grpc.ChatServiceAsyncStub:
        if self._stub is None:
            if self._channel is None:
                self._channel = (
                    grpc.aio.insecure_channel(self._target)
                    if self._credentials is None
                    else grpc.aio.secure_channel(self._target, self._credentials)
                )
            self._stub = chat_service_pb2_grpc.ChatServiceStub(self._channel)
        return self._stub

    def _call_options(self, ctx: CallContext | None) -> tuple[list[tuple[str, str]], float | None]:
        ctx = ctx or _NO_CONTEXT
        metadata: list[tuple[str, str]] = []
        api_key = ctx.api_key or self._api_key
        if api_key:
            metadata.append(("authorization", f"Bearer {api_key}"))
        if ctx.request_id:
            metadata.append(("x-request-id", ctx.request_id))
        return metadata, ctx.timeout if ctx.timeout is not None else self._timeout

    async def chat_batches(
        self, request: chat_pb2.ChatInput, ctx: CallContext | None = None
    ) -> AsyncIterator[Sequence[events_pb2.ChatEvent]]:
        """Events in order, as the router sent them: one batch per stream message (events
        that were ready together). A batch ending in an `error` event is yielded, then the
        error is raised as MeshError."""
        metadata, timeout = self._call_options(ctx)
        call = self._chat_stub().ChatStream(
            chat_service_pb2.ChatStreamRequest(input=request), timeout=timeout, metadata=metadata
        )
        try:
            async for response in call:
                events = response.events
                if not events:
                    continue
                yield events
                last = events[-1]
                if last.HasField("error"):
                    raise MeshError.from_event(last.error)
        except grpc.aio.AioRpcError as err:
            raise MeshError.from_rpc_error(err) from None
        finally:
            call.cancel()  # no-op once the call ended; otherwise stops the router's work

    async def chat_stream(
        self, request: chat_pb2.ChatInput, ctx: CallContext | None = None
    ) -> AsyncIterator[events_pb2.ChatEvent]:
        """Events one by one; an `error` event is yielded, then raised as MeshError."""
        batches = self.chat_batches(request, ctx)
        try:
            async for batch in batches:
                for event in batch:
                    yield event
        finally:
            await batches.aclose()  # type: ignore[attr-defined]

    async def chat(
        self, request: chat_pb2.ChatInput, ctx: CallContext | None = None
    ) -> chat_service_pb2.ChatResponse:
        metadata, timeout = self._call_options(ctx)
        try:
            return await self._chat_stub().Chat(
                chat_service_pb2.ChatRequest(input=request), timeout=timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as err:
            raise MeshError.from_rpc_error(err) from None

    async def chat_text(
        self,
        model: str,
        prompt: str,
        *,
        system_prompt: str | None = None,
        max_tokens: int | None = None,
        ctx: CallContext | None = None,
    ) -> str:
        """The answer's text to one prompt: the shortest way to ask the mesh something."""
        messages = [system(system_prompt)] if system_prompt else []
        messages.append(user(prompt))
        request = chat_pb2.ChatInput(model=model, messages=messages, max_tokens=max_tokens)
        response = await self.chat(request, ctx)
        return "".join(p.text for p in response.message.content if p.HasField("text"))

    async def list_models(
        self, ctx: CallContext | None = None
    ) -> chat_service_pb2.ListModelsResponse:
        metadata, timeout = self._call_options(ctx)
        try:
            return await self._chat_stub().ListModels(
                chat_service_pb2.ListModelsRequest(), timeout=timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as err:
            raise MeshError.from_rpc_error(err) from None

    async def get_usage(
        self, request: usage_service_pb2.GetUsageRequest, ctx: CallContext | None = None
    ) -> usage_service_pb2.GetUsageResponse:
        """The caller's tenant's usage (imesh.api.UsageAPI over imesh.v1.UsageService)."""
        metadata, timeout = self._call_options(ctx)
        self._chat_stub()  # opens the channel when this is the first call
        assert self._channel is not None
        stub = usage_service_pb2_grpc.UsageServiceStub(self._channel)
        try:
            response: usage_service_pb2.GetUsageResponse = await stub.GetUsage(
                request, timeout=timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as err:
            raise MeshError.from_rpc_error(err) from None
        return response

    async def ready(self) -> bool:
        """The router answers its readiness check (grpc.health.v1 on the ChatService: some
        deployment's breaker is closed). No key needed; any failure reads as not ready."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # only probes need it

        self._chat_stub()  # opens the channel when this is the first call
        assert self._channel is not None
        health = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = await health.Check(
                health_pb2.HealthCheckRequest(service=CHAT_SERVICE), timeout=READY_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    async def aclose(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None and self._owns_channel:
            await channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class SyncClient:
    """A blocking Client for scripts: runs one Client on a private event-loop thread.

    Lifecycle: `close()` (or `with`) ends every call still running, then stops the thread.
    Methods may be called from any thread; each call blocks until its answer (or the next
    event) is there. A call blocked or made once the client is closing raises
    MeshError with Reason.CLIENT_CLOSED.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="imesh-sync-client", daemon=True
        )
        self._thread.start()
        self._client = Client(target, api_key=api_key, credentials=credentials, timeout=timeout)
        # Guards `_closed` and `_pending` between caller threads and close().
        self._lock = threading.Lock()
        self._closed = False
        self._pending: set[concurrent.futures.Future[Any]] = set()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        settled = threading.Event()

        async def until_settled() -> T:
            try:
                return await coro
            finally:
                settled.set()

        with self._lock:
            if self._closed:
                coro.close()
                raise client_closed()
            future = asyncio.run_coroutine_threadsafe(until_settled(), self._loop)
            self._pending.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self._closed:  # close() cancelled the call, or it never got to run
                raise client_closed() from None
            raise
        except BaseException:
            # Ctrl-C (or any exception raised into this thread) while the loop runs the
            # coroutine: cancel it and wait until it has unwound, so the call ends now and
            # nothing of it is still running when the caller cleans up (closing a stream
            # whose read is still running would fail).
            if future.cancel():
                settled.wait(CLOSE_WAIT_S)
            raise
        finally:
            with self._lock:
                self._pending.discard(future)

    def chat(
        self, request: chat_pb2.ChatInput, ctx: CallContext | None = None
    ) -> chat_service_pb2.ChatResponse:
        return self._run(self._client.chat(request, ctx))

    def chat_stream(
        self, request: chat_pb2.ChatInput, ctx: CallContext | None = None
    ) -> Iterator[events_pb2.ChatEvent]:
        """Events as they arrive; leaving the loop early cancels the call."""
        stream = self._client.chat_stream(request, ctx)

        async def next_event() -> events_pb2.ChatEvent | None:
            try:
                return await anext(stream)
            except StopAsyncIteration:
                return None

        async def close() -> None:
            await stream.aclose()  # type: ignore[attr-defined]

        try:
            while (event := self._run(next_event())) is not None:
                yield event
        finally:
            if not self._closed:  # close() already ended every call
                try:
                    self._run(close())
                except MeshError as err:  # close() began meanwhile and ends the call
                    if err.reason is not Reason.CLIENT_CLOSED:
                        raise

    def chat_text(self, model: str, prompt: str, **params: Any) -> str:
        return self._run(self._client.chat_text(model, prompt, **params))

    def list_models(self, ctx: CallContext | None = None) -> chat_service_pb2.ListModelsResponse:
        return self._run(self._client.list_models(ctx))

    def ready(self) -> bool:
        return self._run(self._client.ready())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            shutdown = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        shutdown.result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        with self._lock:
            # Submitted just before closing but never run by the stopped loop: their
            # callers would wait forever.
            for future in self._pending:
                future.cancel()
        self._loop.close()

    async def _shutdown(self) -> None:
        # Nothing may stay pending on a loop about to close: closing the channel cancels
        # every call, grpc's per-call tasks then settle, and streams a caller left open
        # (suspended generators holding a call) are closed last.
        await self._client.aclose()
        await _settle_other_tasks()
        await self._loop.shutdown_asyncgens()
        await _settle_other_tasks()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def client_closed() -> MeshError:
    return MeshError.of(Reason.CLIENT_CLOSED, "the client was closed")


async def _settle_other_tasks() -> None:
    """Wait (bounded) for this loop's other tasks to end, then cancel what is left."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        _, stuck = await asyncio.wait(others, timeout=CLOSE_WAIT_S)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
