"""A minimal HTTP/1.1 client for the load generator: one request at a time on one keep-alive
connection, the response parsed in the protocol's own callbacks.

httpx spends about 1 ms of CPU per request on this machine; at concurrency 32 the load
generator's core then saturated before the servers it measured did, so the bench's RPS was the
harness's. Here a request is one write of bytes encoded once, the response is framed by
httptools (Content-Length, chunked, or read to close) as each read arrives, and the caller
awaits one future: no task, no stream reader, no per-chunk loop turn.

Lifecycle: `Http1Client(host, port)`; `await exchange(raw, feed)` from one task at a time
(it connects on first use and again after the server closed the connection); `close()`.
A request that fails, times out or is cancelled mid-way costs its connection (the next
exchange opens a new one): a half-read response cannot be resumed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

Feed = Callable[[bytes], None]


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response this client can read."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    # Lowercased names; a repeated header keeps its last value.
    headers: dict[bytes, bytes]
    # The whole body, except a 200's when the exchange was given a `feed`: it got the body.
    body: bytes


def request_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A complete POST, ready to write as is (encode it once per call shape)."""
    lines = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One TCP connection; at most one exchange in flight. httptools (llhttp, installed with
    uvicorn[standard]) frames the response: measured against a hand parser of the same
    job, 3 vs 9 µs per Content-Length response and 0.6 vs 2.4 µs per chunked read."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._feed: Feed | None = None
        self._headers: dict[bytes, bytes] = {}
        # The body pieces of the current read (fed on at its end) or of the whole response.
        self._parts: list[bytes] = []
        self._streaming = False
        self._to_close = False
        self._complete = False
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._to_close:  # no Content-Length, not chunked: the body ends with the connection
            self._finish()
        else:
            self._fail(ConnectionError("the server closed the connection mid-response"))

    def start(self, raw: bytes, feed: Feed | None) -> asyncio.Future[Response]:
        assert self.transport is not None
        assert self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._feed = feed
        self._headers, self._parts = {}, []
        self._streaming = self._to_close = self._complete = False
        self.transport.write(raw)
        return self._waiter

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes with no request in flight: nothing this connection can trust any more.
            self._fail(ProtocolError(f"unexpected bytes between responses: {data[:80]!r}"))
            return
        try:
            self._parser.feed_data(data)
            if self._streaming and self._parts:
                # One call per read, however many chunks it held.
                parts, self._parts = self._parts, []
                assert self._feed is not None
                self._feed(parts[0] if len(parts) == 1 else b"".join(parts))
        except httptools.HttpParserCallbackError as exc:  # raised by a callback below
            cause = exc.__context__
            self._fail(cause if isinstance(cause, Exception) else ProtocolError(str(exc)))
            return
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"not a valid HTTP/1.1 response: {exc}"))
            return
        except Exception as exc:  # the feed refused the body
            self._fail(exc)
            return
        if self._complete:
            self._finish()
            if not self._keep_alive:
                self.abort()

    # httptools callbacks, called from feed_data.
    def on_message_begin(self) -> None:
        if self._complete:
            raise ProtocolError("bytes after the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._headers = {}  # an interim response: the real one follows
            return
        headers = self._headers
        if headers.get(b"content-encoding", b"identity").lower() != b"identity":
            raise ProtocolError("compressed response (this client asks for none)")
        self._streaming = self._feed is not None and status == 200
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        self._to_close = b"content-length" not in headers and not chunked

    def on_body(self, body: bytes) -> None:
        self._parts.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:
            return
        self._complete = True
        # Asked here: llhttp forgets the response's framing once this callback returns.
        self._keep_alive = self._parser.should_keep_alive()

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            status = self._parser.get_status_code()
            body = b"" if self._streaming else b"".join(self._parts)
            waiter.set_result(Response(status, self._headers, body))

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class Http1Client:
    """One keep-alive connection to `host:port`, opened on first use and again when the
    server has closed it; one exchange at a time."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 60.0) -> None:
        self.host, self.port, self._timeout_s = host, port, timeout_s
        self._conn: _Connection | None = None
        self.connects = 0  # connections opened so far: the tests check keep-alive with it

    async def exchange(self, raw: bytes, feed: Feed | None = None) -> Response:
        """Writes `raw` (a whole request) and returns the response once its body ended.

        With `feed`, a 200's body goes to `feed` piece by piece as it arrives (once per
        read) instead of into `Response.body`; whatever `feed` raises fails the exchange.
        ConnectionError, ProtocolError or TimeoutError when the response cannot be read."""
        conn = self._conn
        loop = asyncio.get_running_loop()
        if conn is None or conn.closed:
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
            self._conn = conn
            self.connects += 1
        waiter = conn.start(raw, feed)
        timer = loop.call_later(self._timeout_s, _expire, conn, waiter, self._timeout_s)
        try:
            return await waiter
        except BaseException:
            conn.abort()  # cancelled or failed mid-response: the connection's state is unknown
            raise
        finally:
            timer.cancel()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.abort()
            self._conn = None


def _expire(conn: _Connection, waiter: asyncio.Future[Response], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no complete response within {timeout_s:g} s"))
        conn.abort()
