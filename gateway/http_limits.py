"""Bounds on a request's head (request line + headers) for uvicorn's httptools protocol.

httptools (llhttp) buffers a head of any size and any number of headers. This protocol
counts both as the parser reports them, and the bytes fed while a head is still open (a
single header can arrive in many reads), and answers 431 Request Header Fields Too Large
before the head is ever handed to the app.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState


class HeadTooLarge(Exception):
    """Raised inside a parser callback; the parser turns it into its own error."""


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

    def on_message_begin(self) -> None:
        super().on_message_begin()
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
