"""Bounds on a request's head (request line + headers) for uvicorn's httptools protocol.

httptools (llhttp) buffers a head of any size and any number of headers. This protocol
counts both as the parser reports them, and the bytes fed while a head is still open (a
single header can arrive in many reads), and answers 431 Request Header Fields Too Large
before the head is ever handed to the app.

It also sends a response's head with its first body write: uvicorn writes them
separately, two TCP segments with TCP_NODELAY, so the caller wakes twice per answer.

And it tells the app when the connection is lost, through the `ConnectionWatch` it puts in
each request's scope (gateway.disconnect): the handler's task is cancelled from
`connection_lost`, without a watcher task per request.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.disconnect import EXTENSION, ConnectionWatch


class HeadTooLarge(Exception):
    """Raised inside a parser callback; the parser turns it into its own error."""


class CoalescingTransport(asyncio.Transport):
    """A transport that holds a response's head until the next write (the body, usually
    in the same step) or the end of the loop iteration, whichever comes first, so a short
    answer leaves as one segment. Closing flushes first; aborting drops what is held.
    Everything else is the wrapped transport's."""

    __slots__ = ("_inner", "_loop", "_pending")

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._pending:
            self._pending.append(bytes(data))
            self.flush()
        elif bytes(data[:5]) == b"HTTP/":
            self._pending.append(bytes(data))
            self._loop.call_soon(self.flush)
        else:
            self._inner.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._inner.is_closing():
            self._inner.write(data)

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        self._pending.clear()
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(len(d) for d in self._pending)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request head of at most `max_header_bytes`
    (request line and headers) and `max_headers` headers. Build it through
    `bounded_protocol()` so uvicorn passes its own arguments as usual."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        max_header_bytes: int,
        max_headers: int,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._in_head = False
        self._head_bytes = 0  # request target and headers, as parsed
        self._open_head_bytes = 0  # bytes read while the head stayed incomplete
        self._header_count = 0
        self._refused: str | None = None
        self._watch = ConnectionWatch()
        # ASGI extensions are dicts: {"imesh.connection_watch": {"watch": ConnectionWatch}}.
        self._extensions: dict[str, dict[object, object]] = {EXTENSION: {"watch": self._watch}}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._watch.fire()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # One dict per connection: what it holds is the connection's.
        self.scope["extensions"] = self._extensions
        self._in_head = True
        self._head_bytes = 0
        self._open_head_bytes = 0
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._max_headers:
            self._refuse(f"more than {self._max_headers} request headers")
        self._count(len(name) + len(value) + 4)  # ": " and CRLF, as on the wire
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A header still arriving is buffered by the parser, unseen by the callbacks: bound
        # the bytes of every read that left the head incomplete.
        if self._in_head and self._refused is None and self.parser is not None:
            self._open_head_bytes += len(data)
            if self._open_head_bytes > self._max_header_bytes:
                self._refused = self._too_big()
                self.send_400_response(self._refused)

    def send_400_response(self, msg: str) -> None:
        if self._refused is None:
            super().send_400_response(msg)
            return
        body = json.dumps(
            {
                "error": {
                    "message": self._refused,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "request_header_fields_too_large",
                }
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()
        self._in_head = False

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._max_header_bytes:
            self._refuse(self._too_big())

    def _too_big(self) -> str:
        return f"the request headers exceed the limit of {self._max_header_bytes} bytes"

    def _refuse(self, why: str) -> None:
        self._refused = why
        raise HeadTooLarge(why)


def bounded_protocol(max_header_bytes: int, max_headers: int) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn.Config(http=...); picklable for worker processes."""
    factory = functools.partial(
        BoundedHttpToolsProtocol, max_header_bytes=max_header_bytes, max_headers=max_headers
    )
    return factory  # type: ignore[return-value]  # uvicorn only calls it
