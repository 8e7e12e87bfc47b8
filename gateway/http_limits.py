"""Bounds on a request's head (request line + headers) for uvicorn's httptools protocol.

httptools (llhttp) buffers a head of any size and any number of headers. This protocol
counts both as the parser reports them, and the bytes fed while a head is still open (a
single header can arrive in many reads), and answers 431 Request Header Fields Too Large
before the head is ever handed to the app.

Its requests are `gateway.http_cycle.EdgeCycle`s: a response's head leaves with its first
body write (uvicorn writes them separately, two TCP segments with TCP_NODELAY, so the
caller would wake twice per answer), checked with one regex per head.

The keep-alive timer is armed once per idle spell, not per request: a response's end only
stamps the time, and the timer, when due, closes the connection if it has been idle for
`timeout_keep_alive` since, or waits out the rest (uvicorn cancels and re-arms a timer
around every request).

The parser callbacks below are uvicorn 0.54's (pinned in pyproject) with the bounds and
these changes folded in; tests/gateway/test_http_cycle.py fails when uvicorn's own
protocol stops answering like this one.

And it tells the app when the connection is lost, through the `ConnectionWatch` it puts in
each request's scope (gateway.disconnect): the handler's task is cancelled from
`connection_lost`, without a watcher task per request.
"""

from __future__ import annotations

import asyncio
import functools
import json
import urllib.parse
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.disconnect import EXTENSION, ConnectionWatch
from gateway.http_cycle import DefaultHead, EdgeCycle


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
        self._watch = ConnectionWatch()
        # ASGI extensions are dicts: {"imesh.connection_watch": {"watch": ConnectionWatch}}.
        self._extensions: dict[str, dict[object, object]] = {EXTENSION: {"watch": self._watch}}
        self._default_head = DefaultHead()
        # loop.time() when the last response ended with nothing else to do; None while busy.
        self._idle_since: float | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        self._watch.fire()

    def data_received(self, data: bytes) -> None:
        self._idle_since = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        # A header still arriving is buffered by the parser, unseen by the callbacks: bound
        # the bytes of every read that left the head incomplete.
        if self._in_head and self._refused is None and self.parser is not None:
            self._open_head_bytes += len(data)
            if self._open_head_bytes > self._max_header_bytes:
                self._refused = self._too_big()
                self.send_400_response(self._refused)

    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
            # One dict per connection: what it holds is the connection's.
            "extensions": self._extensions,
        }
        self._in_head = True
        self._head_bytes = 0
        self._open_head_bytes = 0
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self._max_header_bytes:
            self._refuse(self._too_big())
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._max_headers:
            self._refuse(f"more than {self._max_headers} request headers")
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF, as on the wire
        if self._head_bytes > self._max_header_bytes:
            self._refuse(self._too_big())
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        scope = self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed_url.query or b""

        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency
            or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = self.app

        existing_cycle = self.cycle
        self.cycle = EdgeCycle(
            scope,
            self.transport,
            self.flow,
            self,
            http_version != "1.0" and parser.should_keep_alive(),
            self._default_head.get(self.server_state.default_headers),
        )
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(self.cycle, app)
        else:
            # Pipelined HTTP requests need to be queued up.
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, app))

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_due
            )

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this when a connection gets busy: the armed timer stays and, when
        # due, finds the connection in use (a response's end stamps the idle time again).
        self._idle_since = None

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        since = self._idle_since
        if since is None:
            return  # in use: the response's end re-arms the timer
        left = since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

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
