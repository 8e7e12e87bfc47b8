"""One request/response of the edge's uvicorn protocol, with a cheaper `send`.

`EdgeCycle` is uvicorn 0.54's `RequestResponseCycle` (httptools) with two changes to how a
response leaves, and none to what leaves:

- The head is validated with one regex over the whole header block instead of two per
  header (a block of `name: value\\r\\n` lines fully matches `_HEADER_BLOCK` exactly when
  every name and value passes uvicorn's HEADER_RE / HEADER_VALUE_RE checks), and the
  server's default headers (date, server) are encoded once per change, not per response.
- The head is held until the first body message and written with it, so a complete
  answer (or a stream's head and first frames) leaves in one transport write, one TCP
  segment: no transport wrapper, no end-of-iteration flush callback per response. (An
  app that sends the start and then waits holds its head back until its first body
  message; an app that fails after the start still gets its head out before the close.)

The rest (content-length / chunked framing, HEAD, `Connection: close`, the checks and
their RuntimeErrors, the access log line) is uvicorn's, line for line;
tests/gateway/test_http_cycle.py holds it to uvicorn's own cycle byte for byte.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

from uvicorn._types import (
    ASGI3Application,
    ASGIReceiveEvent,
    ASGISendEvent,
    HTTPRequestEvent,
    HTTPScope,
)
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

# Lines of `name: value\r\n`: names without HEADER_RE's characters, values without
# HEADER_VALUE_RE's (so no CR or LF: a line ends only where it should).
_HEADER_BLOCK = re.compile(
    b'(?:[^\\x00-\\x1f\\x7f()<>@,;:\\[\\]={} \\t\\\\"]*: [^\\x00-\\x08\\x0a-\\x1f\\x7f]*\\r\\n)*'
)


class DefaultHead:
    """The server's default headers (uvicorn renews the list once a second for `date`),
    encoded and checked once per list. None when one of them steers the framing or the
    connection: then they go through the per-response path like any other header."""

    __slots__ = ("_block", "_source")

    def __init__(self) -> None:
        self._source: list[tuple[bytes, bytes]] | None = None
        self._block: bytes | None = None

    def get(self, defaults: list[tuple[bytes, bytes]]) -> bytes | None:
        if defaults is not self._source:
            self._source = defaults
            self._block = _plain_block(defaults)
        return self._block


def _plain_block(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    lines: list[bytes] = []
    for name, value in headers:
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding", b"connection"):
            return None
        lines += (name, b": ", value, b"\r\n")
    block = b"".join(lines)
    return block if _HEADER_BLOCK.fullmatch(block) is not None else None


class Signal:
    """What uvicorn's cycle uses of asyncio.Event (set, clear, is_set, wait), without its
    per-request construction cost; `value` is read directly on the hot path."""

    __slots__ = ("_waiters", "value")

    def __init__(self) -> None:
        self.value = False
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        if not self.value:
            self.value = True
            if self._waiters:
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    def clear(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value

    async def wait(self) -> bool:
        if self.value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class EdgeCycle(RequestResponseCycle):
    """See the module docstring. `default_head`: the encoded default headers, or None to
    treat `default_headers` per response as uvicorn does."""

    def __init__(
        self,
        scope: HTTPScope,
        transport: asyncio.Transport,
        flow: FlowControl,
        protocol: HttpToolsProtocol,
        keep_alive: bool,
        default_head: bytes | None,
    ) -> None:
        # RequestResponseCycle.__init__'s state, set here in one call; the logger, the
        # access log and the default headers come from the protocol.
        self.scope = scope
        self.transport = transport
        self.flow = flow
        self.logger = protocol.logger
        self.access_logger = protocol.access_logger
        self.access_log = protocol.access_log
        self.default_headers = protocol.server_state.default_headers
        self.message_event = self._signal = Signal()  # type: ignore[assignment]
        self.on_response = protocol.on_response_complete
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = protocol.expect_100_continue
        self.body = bytearray()
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding = None
        self.expected_content_length = 0
        self._default_head = default_head
        self._head = b""  # a head not yet written (it leaves with the first body message)

    async def receive(self) -> ASGIReceiveEvent:
        # uvicorn's, without awaiting a signal that is already set.
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False

        if not self.disconnected and not self.response_complete:
            if self.flow.read_paused:
                self.flow.resume_reading()
            signal = self._signal
            if not signal.value:
                await signal.wait()
            signal.value = False

        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        message: HTTPRequestEvent = {
            "type": "http.request",
            "body": bytes(self.body),
            "more_body": self.more_body,
        }
        self.body = bytearray()
        return message

    async def run_asgi(self, app: ASGI3Application) -> None:
        # uvicorn's, but a response cut short still sends the head it started.
        try:
            result = await app(self.scope, self.receive, self.send)  # type: ignore[func-returns-value]
        except BaseException as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self._cut()
        else:
            if result is not None:
                msg = "ASGI callable should return None, but returned '%s'."
                self.logger.error(msg, result)
                self._cut()
            elif not self.response_started and not self.disconnected:
                self.logger.error("ASGI callable returned without starting response.")
                await self.send_500_response()
            elif not self.response_complete and not self.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self._cut()
        finally:
            self.on_response = _nothing

    def _cut(self) -> None:
        """End the connection mid-response, with the head when it is still held."""
        if self._head and not self.disconnected:
            self.transport.write(self._head)
        self._head = b""
        self.transport.close()

    async def send(self, message: ASGISendEvent) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()

        if self.disconnected:
            return

        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self.response_started = True
            self.waiting_for_100_continue = False
            if self.access_log:
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(self.scope),
                    self.scope["method"],
                    get_path_with_query_string(self.scope),
                    self.scope["http_version"],
                    message["status"],
                )
            self._head = self._encode_head(message["status"], message.get("headers", ()))
            return

        if self.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent,"
                " after response already completed."
            )
        if message["type"] != "http.response.body":
            raise RuntimeError(
                f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
            )
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        data = self._head  # cleared once it is written (a failure here keeps it for _cut)
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        elif self.chunked_encoding:
            if body:
                data += b"%x\r\n" % len(body) + body + b"\r\n"
            if not more_body:
                data += b"0\r\n\r\n"
        else:
            num_bytes = len(body)
            if num_bytes > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= num_bytes
            data += body
        if data:
            self._head = b""
            self.transport.write(data)

        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _encode_head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        default_head = self._default_head
        if default_head is None:
            headers = self.default_headers + list(headers)
            default_head = b""
        elif type(headers) is not list:
            headers = list(headers)  # iterated twice when a header is invalid
        lines: list[bytes] = []
        has_connection_close = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            lines += (name, b": ", value, b"\r\n")
        block = b"".join(lines)
        if _HEADER_BLOCK.fullmatch(block) is None:
            _raise_invalid(headers)

        tail = b"\r\n"
        if not self.keep_alive and not has_connection_close:
            tail = b"connection: close\r\n" + tail
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status not in (204, 304)
        ):
            self.chunked_encoding = True
            tail = b"transfer-encoding: chunked\r\n" + tail
        return STATUS_LINE[status] + default_head + block + tail


def _nothing() -> None:
    pass


def _raise_invalid(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """uvicorn's error for the first bad header (names are checked before values)."""
    for name, value in headers:
        if HEADER_RE.search(name):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(value):
            raise RuntimeError("Invalid HTTP header value.")
    raise AssertionError("a header block failed its check, but no header did")
