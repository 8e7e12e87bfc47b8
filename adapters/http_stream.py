"""Drives one provider HTTP call: time bounds, status mapping, SSE through a translator,
and the Backend failure contract (usage first, then the error, once output has begun)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import httpx

from adapters.http_errors import (
    ERROR_BODY_LIMIT,
    error_from_status,
    interrupted,
    upstream_malformed,
    upstream_timeout,
    upstream_unreachable,
)
from adapters.sse import SSEEvent, iter_sse
from adapters.stream_translator import StreamTranslator
from imesh.errors import MeshError
from imesh.v1 import events_pb2

# What a translator raises on a body of the wrong shape: bad JSON or bad UTF-8
# (ValueError), or valid JSON with a null, list or string where an object or number
# belongs (TypeError, AttributeError). All are the provider's fault, never ours.
MALFORMED = (ValueError, TypeError, AttributeError)


@dataclass(frozen=True, slots=True)
class CallBounds:
    """When the call must have produced its first output, and its overall deadline
    (both `time.monotonic()` instants; `deadline` None means unbounded)."""

    first_output_by: float
    deadline: float | None

    @classmethod
    def start(cls, first_byte: float, deadline: float | None) -> CallBounds:
        first = time.monotonic() + first_byte
        return cls(first if deadline is None else min(first, deadline), deadline)


async def stream_events(
    http: httpx.AsyncClient,
    request: httpx.Request,
    translator: StreamTranslator,
    *,
    provider: str,
    bounds: CallBounds,
    secrets: Sequence[str],
) -> AsyncGenerator[events_pb2.ChatEvent, None]:
    """The translated events of one streaming call; see the module docstring."""
    response = await _open(http, request, provider=provider, bounds=bounds, secrets=secrets)
    events = iter_sse(response.aiter_lines())
    try:
        failure: MeshError | None = None
        while not translator.done:
            try:
                sse = await _next_within(events, _bound(translator, bounds))
                if sse is None:
                    break
                out = translator.feed(sse)
            except MeshError as err:
                failure = err
                break
            except TimeoutError:
                failure = _timed_out(provider, translator, bounds)
                break
            except httpx.TimeoutException:
                failure = upstream_timeout(provider, "no bytes within the read timeout")
                break
            except httpx.HTTPError as exc:
                failure = upstream_unreachable(provider, exc)
                break
            except MALFORMED:
                failure = upstream_malformed(provider)
                break
            for event in out:
                yield event
        if failure is None and not translator.done:
            failure = MeshError(
                grpc.StatusCode.UNAVAILABLE,
                "UPSTREAM_UNAVAILABLE",
                f"{provider}: stream ended before its final event",
                metadata={"provider": provider},
            )
        if failure is not None:
            if not translator.output_started:
                raise failure
            usage = await translator.partial_usage()
            yield events_pb2.ChatEvent(usage=usage)
            if failure.code is grpc.StatusCode.DEADLINE_EXCEEDED and _deadline_passed(bounds):
                failure.usage = usage
                raise failure
            raise interrupted(provider, failure.message, usage, cause=failure)
        await _drain(events)
        for event in await translator.final_events():
            yield event
    finally:
        await events.aclose()
        await response.aclose()


async def post_json(
    http: httpx.AsyncClient,
    request: httpx.Request,
    *,
    provider: str,
    bounds: CallBounds,
    secrets: Sequence[str],
) -> dict[str, Any]:
    """A whole non-streaming JSON answer, within the call's bounds."""
    response = await _open(http, request, provider=provider, bounds=bounds, secrets=secrets)
    try:
        try:
            async with _timeout_at(bounds.deadline):
                body = await response.aread()
        except TimeoutError:
            raise upstream_timeout(provider, "deadline passed while reading the answer") from None
        except httpx.TimeoutException:
            raise upstream_timeout(provider, "no bytes within the read timeout") from None
        except httpx.HTTPError as exc:
            raise upstream_unreachable(provider, exc) from None
        try:
            parsed = json.loads(body)
        except ValueError:
            raise upstream_malformed(provider) from None
        if not isinstance(parsed, dict):
            raise upstream_malformed(provider)
        return parsed
    finally:
        await response.aclose()


async def _open(
    http: httpx.AsyncClient,
    request: httpx.Request,
    *,
    provider: str,
    bounds: CallBounds,
    secrets: Sequence[str],
) -> httpx.Response:
    """Sends the request and waits for a 2xx status line within `first_output_by`;
    a non-2xx answer is read (bounded) and raised as the mapped MeshError."""
    try:
        async with _timeout_at(bounds.first_output_by):
            response = await http.send(request, stream=True)
            if response.is_success:
                return response
            try:
                body = await _read_limited(response)
            finally:
                await response.aclose()
    except TimeoutError:
        what = (
            "deadline passed before the provider answered"
            if _deadline_passed(bounds)
            else "no response within the first-byte timeout"
        )
        raise upstream_timeout(provider, what) from None
    except httpx.TimeoutException:
        raise upstream_timeout(provider, "connect or read timeout") from None
    except httpx.HTTPError as exc:
        raise upstream_unreachable(provider, exc) from None
    raise error_from_status(provider, response.status_code, response.headers, body, secrets=secrets)


async def _read_limited(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= ERROR_BODY_LIMIT:
            break
    return b"".join(chunks)[:ERROR_BODY_LIMIT]


# After the provider's terminal event only the body's end (the chunked terminator) is
# left; reading it lets httpx return the connection to the pool instead of dropping it.
# A provider that keeps talking past its terminal event loses the connection instead.
_DRAIN_S = 0.25
_DRAIN_EVENTS = 8


async def _drain(events: AsyncIterator[SSEEvent]) -> None:
    try:
        async with asyncio.timeout(_DRAIN_S):
            for _ in range(_DRAIN_EVENTS):
                await anext(events)
    except (StopAsyncIteration, TimeoutError, httpx.HTTPError, ValueError):
        pass


async def _next_within(events: AsyncIterator[SSEEvent], bound: float | None) -> SSEEvent | None:
    """The next event, or None at end of stream; TimeoutError past `bound`."""
    try:
        if bound is None:
            return await anext(events)
        async with _timeout_at(bound):
            return await anext(events)
    except StopAsyncIteration:
        return None


def _timeout_at(when: float | None) -> asyncio.Timeout:
    """asyncio.timeout_at for a `time.monotonic()` instant (the loop's clock may differ)."""
    if when is None:
        return asyncio.timeout(None)
    loop = asyncio.get_running_loop()
    return asyncio.timeout_at(loop.time() + (when - time.monotonic()))


def _bound(translator: StreamTranslator, bounds: CallBounds) -> float | None:
    # Before output the first-byte bound applies (it is never later than the deadline);
    # after it, only the deadline, while httpx's read timeout bounds each silence.
    return bounds.deadline if translator.output_started else bounds.first_output_by


def _deadline_passed(bounds: CallBounds) -> bool:
    return bounds.deadline is not None and time.monotonic() >= bounds.deadline


def _timed_out(provider: str, translator: StreamTranslator, bounds: CallBounds) -> MeshError:
    if _deadline_passed(bounds):
        return upstream_timeout(provider, "deadline passed while streaming")
    if translator.output_started:
        return upstream_timeout(provider, "stream stalled")
    return upstream_timeout(provider, "no output within the first-byte timeout")
