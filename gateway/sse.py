"""Relays a ChatEvent stream to the caller as SSE, batch by batch, and cancels on disconnect.

Each batch (the events one upstream read delivered) is written the moment it arrives, as
one ASGI send of its frames; nothing is held back except usage, which OpenAI puts last.
Response headers wait for the first batch, so a failure before it still gets its real HTTP
status, and the overhead header can be measured to the first chunk. When the caller goes
away the request task is cancelled (gateway.disconnect), which closes the batch iterator
and with it the call to the upstream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from starlette.types import Receive, Scope, Send

from gateway.disconnect import CallerWatch, watch_caller
from gateway.errors import as_mesh_error, log_unexpected
from gateway.rate_limit import start_headers
from gateway.responses import Exchange, send_error
from gateway.translate_response import ChunkEncoder
from imesh.v1 import events_pb2

SSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Tells nginx-style proxies in front of the edge not to buffer the stream.
    (b"x-accel-buffering", b"no"),
)


async def relay_stream(
    batches: AsyncIterator[Sequence[events_pb2.ChatEvent]],
    encoder_args: tuple[str, str, int, bool],
    ex: Exchange,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Send `events` as an SSE response; any failure ends it the way the SDK expects."""
    watch = watch_caller(scope, receive)
    try:
        await _relay(batches, ChunkEncoder(*encoder_args), ex, watch, send)
    except asyncio.CancelledError:
        if not watch.absorb_cancel():
            raise
    finally:
        watch.stop()
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            # Closing cancels the call upstream when it is still running (caller gone).
            await aclose()


async def _relay(
    batches: AsyncIterator[Sequence[events_pb2.ChatEvent]],
    encoder: ChunkEncoder,
    ex: Exchange,
    watch: CallerWatch,
    send: Send,
) -> None:
    waited = time.perf_counter()
    try:
        first = await anext(batches)
    except StopAsyncIteration:
        first = None
    except Exception as exc:  # before any byte went out: a plain HTTP error answers it
        ex.waited_s += time.perf_counter() - waited
        log_unexpected(exc)
        watch.stop()
        await send_error(send, ex, exc)
        return
    ex.waited_s += time.perf_counter() - waited

    ex.status = 200
    headers = ex.headers(SSE_HEADERS, start_headers(first))  # x-ratelimit-* (tenancy)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    # The batch that completes the stream is held only until the iterator ends (at once),
    # so it leaves in one write with the closing frames.
    held = b""
    if first is not None:
        body = encoder.frames(first)
        if _completes(first):
            held = body
        else:
            await send({"type": "http.response.body", "body": body, "more_body": True})
    try:
        async for batch in batches:
            frames = encoder.frames(batch)
            if _completes(batch):
                held += frames
            elif frames:
                await send({"type": "http.response.body", "body": frames, "more_body": True})
    except Exception as exc:  # after the start: the SSE error frame is the only way to say it
        log_unexpected(exc)
        tail = held + encoder.error(as_mesh_error(exc))
    else:
        tail = held + (encoder.tail() if not encoder.errored else b"")
    watch.stop()
    await send({"type": "http.response.body", "body": tail, "more_body": False})


def _completes(batch: Sequence[events_pb2.ChatEvent]) -> bool:
    return bool(batch) and batch[-1].WhichOneof("event") == "finish"
