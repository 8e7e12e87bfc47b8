"""ShardedTransport: connections spread over several small httpx pools, a candidate in the
bench's transport comparison (bench/transport_relay.py); the adapters no longer use it.

httpcore's pool re-scans every connection (with a readability syscall each) for every
request it assigns and every response it closes, so its cost per request grows with the
number of open connections: at 32 concurrent streams one pool of 100 connections spent
about 6 ms of CPU per request here, sixteen pools of 8 about 2.3 ms. Requests go to the
shard with the fewest requests in flight; a shard is an ordinary AsyncHTTPTransport.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import httpx

# Connections per shard: small enough that a shard's scans stay cheap, large enough that
# a burst rarely waits for a shard while another is idle.
SHARD_CONNECTIONS = 8


class ShardedTransport(httpx.AsyncBaseTransport):
    """Lifecycle: built once per relay, shared by every call, `aclose()` at shutdown."""

    def __init__(
        self,
        *,
        max_connections: int,
        http2: bool,
        shard_connections: int = SHARD_CONNECTIONS,
    ) -> None:
        count = max(1, math.ceil(max_connections / shard_connections))
        # Shard sizes add up to max_connections exactly (they differ by at most one), so
        # the configured cap holds for the provider as a whole.
        base, extra = divmod(max_connections, count)
        sizes = [base + (1 if i < extra else 0) for i in range(count)]
        # One TLS context for all shards: building one loads the CA bundle (tens of ms).
        tls = httpx.create_ssl_context()
        self._shards = [
            httpx.AsyncHTTPTransport(
                verify=tls,
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                http2=http2,
            )
            for size in sizes
        ]
        self._in_flight = [0] * count

    @property
    def in_flight(self) -> tuple[int, ...]:
        """Requests whose response is not closed yet, per shard."""
        return tuple(self._in_flight)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        in_flight = self._in_flight
        shard = in_flight.index(min(in_flight))
        in_flight[shard] += 1

        def done() -> None:
            in_flight[shard] -= 1

        try:
            response = await self._shards[shard].handle_async_request(request)
        except BaseException:
            done()
            raise
        response.stream = _ReleasingStream(response.stream, done)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """The response body, calling `done` once when it is closed (read out or abandoned)."""

    def __init__(
        self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, done: Callable[[], None]
    ) -> None:
        assert isinstance(inner, httpx.AsyncByteStream)
        self._inner = inner
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done()
        await self._inner.aclose()
