"""HttpBackend: the one skeleton every HTTP provider shares.

A call: wait for a connection slot (the mesh's own queue), send the request, wait for a
2xx status within the first-byte bound, then per socket read: split the complete SSE
events, translate them in one pass, yield them as one batch. One ReadTimer bounds the
call (first output, then the caller's deadline); httpx's read timeout bounds each silence.
A subclass says only what differs: the path, the body, the stream translator and, for a
non-streaming call, how a whole answer becomes events.

A non-streaming call (the provider configured `streaming: false`, or `request.whole` on a
backend that `answers_whole`) yields the whole answer as one batch. Its status line comes
only once the answer is ready, so the first-byte bound does not apply to it and httpx's
read timeout is stretched to the deadline: the deadline (the router's attempt limit)
bounds the whole call.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Mapping

import httpx

from adapters.backend import Backend, Batch
from adapters.config import HttpProviderConfig
from adapters.connection_gate import ConnectionGate
from adapters.deadline import Deadline
from adapters.http_client import ProviderHttp
from adapters.http_errors import (
    ERROR_BODY_LIMIT,
    error_from_status,
    interrupted,
    stream_ended_early,
    upstream_malformed,
    upstream_timeout,
    upstream_unreachable,
)
from adapters.read_timer import ReadTimer
from adapters.sse import SSEParser
from adapters.stream_translator import MALFORMED, StreamTranslator
from adapters.token_estimate import TokenCounter
from imesh.errors import MeshError, Reason
from imesh.v1 import adapter_service_pb2, events_pb2

# After the provider's terminal event only the body's end (the chunked terminator) is
# left; reading it lets the pool keep the connection instead of dropping it. A provider
# that keeps talking past its terminal event loses the connection instead.
_DRAIN_S = 0.25
_DRAIN_READS = 4
_SSE_HEADERS = {"accept": "text/event-stream"}

# Closes still running after their caller was cancelled (a strong reference each).
_closing: set[asyncio.Task[None]] = set()


class HttpBackend(Backend):
    """Lifecycle: built once per provider entry (resolves its secrets then), shared by
    every call, `aclose()` at shutdown. See the module docstring for one call."""

    provider: str
    path: str

    def __init__(
        self,
        config: HttpProviderConfig,
        *,
        headers: Mapping[str, str],
        secrets: tuple[str, ...],
        streaming: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._secrets = secrets
        self._streaming = streaming
        self._first_byte = config.timeouts.first_byte
        self._counter = TokenCounter(config.tokenizer)
        self.gate = ConnectionGate(
            provider=self.provider, limit=config.max_connections, wait_s=config.timeouts.pool
        )
        self._http = ProviderHttp(config, headers=headers, transport=transport)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._http.base_url!r})"

    @abc.abstractmethod
    def body(self, request: adapter_service_pb2.GenerateRequest, *, stream: bool) -> bytes:
        """The request body for a streaming or a non-streaming call (raises MeshError
        INVALID_REQUEST for what the API refuses)."""

    @abc.abstractmethod
    def translator(self, request: adapter_service_pb2.GenerateRequest) -> StreamTranslator:
        """A fresh translator for one streaming call."""

    async def whole_answer(
        self, body: bytes, request: adapter_service_pb2.GenerateRequest
    ) -> Batch:
        """The events of a whole non-streaming answer, from its body (kinds that support
        one). A body of the wrong shape raises one of MALFORMED."""
        raise NotImplementedError

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        stream = self._streaming and not (request.whole and self.answers_whole)
        if stream:
            http_request = self._http.request(
                self.path, self.body(request, stream=True), headers=_SSE_HEADERS
            )
            first_by = min(deadline, Deadline.after(self._first_byte))
        else:
            http_request = self._http.request(
                self.path, self.body(request, stream=False), read_timeout=deadline.remaining()
            )
            first_by = deadline
        await self.gate.acquire(min(deadline, Deadline.after(self._first_byte)))
        timer = ReadTimer(first_by.loop_at())
        response: httpx.Response | None = None
        try:
            response = await self._open(http_request, timer, deadline)
            if not stream:
                yield await self._whole(response, timer, request)
                return
            translator = self.translator(request)
            parser = SSEParser()
            reads = response.aiter_bytes()
            failure: MeshError | None = None
            batch: Batch = []
            while failure is None and not translator.done:
                try:
                    with timer:
                        chunk = await anext(reads)
                except StopAsyncIteration:
                    failure = stream_ended_early(self.provider)
                    break
                except TimeoutError:
                    failure = self._timed_out(deadline, translator.output_started)
                    break
                except httpx.HTTPError as exc:
                    failure = self._read_failed(exc)
                    break
                started = translator.output_started
                batch, failure = translator.translate(parser.feed(chunk))
                if failure is not None:
                    break
                if translator.done:
                    await _drain(reads)
                    batch.extend(await translator.final_events())
                if translator.output_started and not started:
                    timer.reschedule(deadline.loop_at())  # past the first output: the deadline
                if batch:
                    yield batch
                    batch = []
            if failure is not None:
                if not translator.output_started:
                    raise failure
                # Output began: the usage known goes out (with any events the last read
                # gave before the failure), then the error carrying the same usage.
                usage = await translator.partial_usage()
                batch.append(events_pb2.ChatEvent(usage=usage))
                yield batch
                raise _after_output(failure, usage, deadline)
        finally:
            timer.cancel()
            if response is not None:
                await _close(response)
            self.gate.release()

    async def _open(
        self, request: httpx.Request, timer: ReadTimer, deadline: Deadline
    ) -> httpx.Response:
        """Sends the request and waits for a 2xx status line within the first-byte bound;
        a non-2xx answer is read (bounded) and raised as the mapped MeshError."""
        try:
            with timer:
                response = await self._http.send(request)
        except TimeoutError:
            what = (
                "deadline passed before the provider answered"
                if deadline.expired()
                else "no response within the first-byte timeout"
            )
            raise upstream_timeout(self.provider, what) from None
        except httpx.PoolTimeout:
            # The gate keeps calls within the pool: a wait here is still our own queue.
            raise MeshError.of(
                Reason.OVERLOADED, f"{self.provider}: connection pool full", retry_after=1.0
            ) from None
        except httpx.TimeoutException as exc:
            if not _timed_out(exc):
                raise upstream_unreachable(self.provider, exc) from None
            raise upstream_timeout(self.provider, "connect or read timeout") from None
        except httpx.HTTPError as exc:
            raise upstream_unreachable(self.provider, exc) from None
        if response.is_success:
            return response
        try:
            with timer:
                body = await _read_limited(response)
        except (TimeoutError, httpx.HTTPError):
            body = b""
        finally:
            await _close(response)
        raise error_from_status(
            self.provider, response.status_code, response.headers, body, secrets=self._secrets
        )

    async def _whole(
        self,
        response: httpx.Response,
        timer: ReadTimer,
        request: adapter_service_pb2.GenerateRequest,
    ) -> Batch:
        try:
            with timer:
                body = await response.aread()
        except TimeoutError:
            raise upstream_timeout(
                self.provider, "deadline passed before the whole answer came"
            ) from None
        except httpx.HTTPError as exc:
            raise self._read_failed(exc) from None
        try:
            return await self.whole_answer(body, request)
        except MALFORMED:
            raise upstream_malformed(self.provider) from None

    def _read_failed(self, exc: httpx.HTTPError) -> MeshError:
        if isinstance(exc, httpx.TimeoutException) and _timed_out(exc):
            return upstream_timeout(self.provider, "no bytes within the read timeout")
        return upstream_unreachable(self.provider, exc)

    def _timed_out(self, deadline: Deadline, started: bool) -> MeshError:
        if deadline.expired():
            return upstream_timeout(self.provider, "deadline passed while streaming")
        if started:
            return upstream_timeout(self.provider, "stream stalled")
        return upstream_timeout(self.provider, "no output within the first-byte timeout")

    async def aclose(self) -> None:
        await self._http.aclose()


def _after_output(failure: MeshError, usage: events_pb2.Usage, deadline: Deadline) -> MeshError:
    # The caller's own deadline stays a deadline (with the usage); anything else that ends
    # a started stream is an interruption, never retried.
    if failure.reason is Reason.UPSTREAM_TIMEOUT and deadline.expired():
        return failure.with_usage(usage)
    return interrupted(failure, usage)


def _timed_out(exc: httpx.TimeoutException) -> bool:
    # httpx-aiohttp maps every aiohttp connection error, a refused connection too, to
    # ConnectTimeout; aiohttp's own timeouts are TimeoutErrors, so the cause tells.
    return exc.__cause__ is None or isinstance(exc.__cause__, TimeoutError)


async def _read_limited(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= ERROR_BODY_LIMIT:
            break
    return b"".join(chunks)[:ERROR_BODY_LIMIT]


async def _drain(reads: AsyncIterator[bytes]) -> None:
    try:
        async with asyncio.timeout(_DRAIN_S):
            for _ in range(_DRAIN_READS):
                await anext(reads)
    except (StopAsyncIteration, TimeoutError, httpx.HTTPError):
        pass


async def _close(response: httpx.Response) -> None:
    """Closes a response even when the caller is cancelled again while it closes.

    A close interrupted half-way leaves the pool counting a dead connection as busy for
    good (httpcore marks a stream closed before its cleanup has run): under a cancelled
    burst that exhausted the pool. The close runs in its own task, so a second cancel
    interrupts only the wait for it.
    """
    if response.is_closed:
        return
    close = asyncio.ensure_future(response.aclose())
    try:
        await asyncio.shield(close)
    except asyncio.CancelledError:
        _closing.add(close)
        close.add_done_callback(_closed)
        raise


def _closed(close: asyncio.Task[None]) -> None:
    _closing.discard(close)
    if not close.cancelled():
        close.exception()  # retrieved: a failed close of a cancelled call is no news
