"""The edge's uvicorn protocol answers byte for byte like uvicorn's own, in fewer writes.

gateway.http_limits / gateway.http_cycle fold uvicorn 0.54's httptools protocol and
request cycle into cheaper code; these tests feed both protocols the same bytes and
compare what they write and whether they close, so an uvicorn upgrade that changes its
answers fails here before the override drifts from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.http_cycle import DefaultHead, Signal
from gateway.http_limits import BoundedHttpToolsProtocol

App = Callable[[Any, Any, Any], Awaitable[None]]
DEFAULTS = [(b"date", b"Fri, 27 Nov 2026 20:00:00 GMT"), (b"server", b"uvicorn")]


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 80)}.get(name)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def json_app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    body = b'{"ok":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def stream_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"X-Up", b"1")]})
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": True})
    await send({"type": "http.response.body", "body": b"data: 2\n\n"})


async def closing_app(scope: Any, receive: Any, send: Any) -> None:
    headers = [(b"content-length", b"2"), (b"Connection", b"Keep-Alive, Close")]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": b"no"})


async def empty_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body"})


def failing_app(*, after_start: bool) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("boom")

    return app


def bad_header_app(name: bytes, value: bytes) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"0"), (name, value)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body"})

    return app


def framing_app(body: bytes) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]}
        )
        await send({"type": "http.response.body", "body": body})

    return app


POST = b"POST /v1/x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}"
GET = b"GET /healthz?a=1 HTTP/1.1\r\nhost: a\r\n\r\n"


async def serve(protocol_class: Any, app: App, data: list[bytes], **config: Any) -> Recorder:
    config.setdefault("access_log", False)
    cfg = Config(app=app, lifespan="off", log_config=None, **config)
    state = ServerState()
    state.default_headers = list(DEFAULTS)
    transport = Recorder()
    protocol = protocol_class(cfg, state, {}, asyncio.get_running_loop())
    protocol.connection_made(transport)
    for chunk in data:
        protocol.data_received(chunk)
        for _ in range(10):
            await asyncio.sleep(0)
    for task in list(state.tasks):
        await task
    protocol.connection_lost(None)
    return transport


def edge_protocol(*args: Any) -> BoundedHttpToolsProtocol:
    return BoundedHttpToolsProtocol(*args, max_header_bytes=65536, max_headers=100)


CASES: dict[str, tuple[App, list[bytes]]] = {
    "json": (json_app, [POST]),
    "json twice on one connection": (json_app, [POST, POST]),
    "pipelined": (json_app, [POST + POST + POST]),
    "body in pieces": (json_app, [POST[:-1], POST[-1:]]),
    "expect 100-continue": (
        json_app,
        [b"POST / HTTP/1.1\r\nhost: a\r\nexpect: 100-Continue\r\ncontent-length: 2\r\n\r\n", b"{}"],
    ),
    "HEAD": (json_app, [b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n"]),
    "HTTP/1.0": (json_app, [b"GET / HTTP/1.0\r\n\r\n"]),
    "connection: close asked": (json_app, [b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n"]),
    "chunked stream": (stream_app, [GET]),
    "chunked stream, HEAD": (stream_app, [b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n"]),
    "app says connection: close": (closing_app, [GET, GET]),
    "204": (empty_app, [GET]),
    "500 before the start": (failing_app(after_start=False), [GET]),
    "failure after the start": (failing_app(after_start=True), [GET]),
    "bad header name": (bad_header_app(b"x y", b"1"), [GET]),
    "bad header value": (bad_header_app(b"x-y", b"a\r\nb"), [GET]),
    "body longer than content-length": (framing_app(b"abcd"), [GET]),
    "body shorter than content-length": (framing_app(b"ab"), [GET]),
    "malformed request": (json_app, [b"GET / HTTP/1.1\r\nbad header\r\n\r\n"]),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_edge_protocol_writes_what_uvicorn_writes(case: str) -> None:
    app, data = CASES[case]
    theirs = await serve(HttpToolsProtocol, app, data)
    ours = await serve(edge_protocol, app, data)
    assert b"".join(ours.writes) == b"".join(theirs.writes)
    assert ours.closed == theirs.closed
    assert len(ours.writes) <= len(theirs.writes)


async def test_a_complete_answer_leaves_in_one_write() -> None:
    ours = await serve(edge_protocol, json_app, [POST, POST])
    assert len(ours.writes) == 2
    assert all(
        w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b'{"ok":true}') for w in ours.writes
    )


async def test_a_streams_head_leaves_with_its_first_frame() -> None:
    ours = await serve(edge_protocol, stream_app, [GET])
    assert ours.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert ours.writes[0].endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert ours.writes[1:] == [b"9\r\ndata: 2\n\n\r\n0\r\n\r\n"]


def test_default_headers_are_encoded_once_per_list() -> None:
    head = DefaultHead()
    defaults = list(DEFAULTS)
    block = head.get(defaults)
    assert block == b"date: Fri, 27 Nov 2026 20:00:00 GMT\r\nserver: uvicorn\r\n"
    assert head.get(defaults) is block
    assert head.get([(b"Server", b"x")]) == b"server: x\r\n"
    # Headers that steer the framing or the connection go the per-response way.
    assert head.get([(b"connection", b"close")]) is None
    assert head.get([(b"x-bad", b"a\nb")]) is None


class FakeClockLoop:
    """The running loop with a hand-moved clock and recorded timers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], None], asyncio.TimerHandle]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(self.now + delay, callback, (), self._loop)
        self.timers.append((self.now + delay, callback, handle))
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now and not t[2].cancelled()]
        self.timers = [t for t in self.timers if t not in due]
        for _, callback, _ in due:
            callback()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


async def test_keep_alive_closes_after_the_idle_time_since_the_last_answer() -> None:
    loop = FakeClockLoop(asyncio.get_running_loop())
    cfg = Config(app=json_app, lifespan="off", log_config=None, timeout_keep_alive=5)
    state = ServerState()
    transport = Recorder()
    protocol = edge_protocol(cfg, state, {}, loop)
    protocol.connection_made(transport)

    async def answer() -> None:
        protocol.data_received(POST)
        for task in list(state.tasks):
            await task

    await answer()
    assert len(loop.timers) == 1
    loop.advance(3)
    await answer()  # idle again from t=3: no new timer, the armed one is re-aimed when due
    assert len(loop.timers) == 1
    loop.advance(2)  # t=5: idle for 2 s only
    assert not transport.closed
    assert [due for due, _, _ in loop.timers] == [8.0]
    protocol.data_received(POST[:10])  # busy (a request arriving) when the timer is due
    loop.advance(3)
    assert not transport.closed
    assert loop.timers == []
    protocol.data_received(POST[10:])
    for task in list(state.tasks):
        await task
    assert [due for due, _, _ in loop.timers] == [13.0]
    loop.advance(5)
    assert transport.closed


async def test_a_lost_connection_cancels_its_keep_alive_timer() -> None:
    loop = FakeClockLoop(asyncio.get_running_loop())
    cfg = Config(app=json_app, lifespan="off", log_config=None)
    state = ServerState()
    protocol = edge_protocol(cfg, state, {}, loop)
    protocol.connection_made(Recorder())
    protocol.data_received(POST)
    for task in list(state.tasks):
        await task
    [(_, _, handle)] = loop.timers
    protocol.connection_lost(None)
    assert handle.cancelled()


async def test_the_cycles_signal_wakes_every_waiter_and_forgets_cancelled_ones() -> None:
    signal = Signal()
    first = asyncio.ensure_future(signal.wait())
    second = asyncio.ensure_future(signal.wait())
    gone = asyncio.ensure_future(signal.wait())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert not first.done()
    signal.set()
    assert await first
    assert await second
    assert gone.cancelled()
    assert signal.is_set()
    assert await signal.wait()  # set: no waiting
    signal.clear()
    assert not signal.is_set()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_the_access_log_line_is_uvicorns(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(logger, "disabled", False)
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the level cache
    lines = []
    for protocol_class in (HttpToolsProtocol, edge_protocol):
        handler = _Lines()
        logger.addHandler(handler)
        try:
            await serve(protocol_class, json_app, [POST], access_log=True)
        finally:
            logger.removeHandler(handler)
        lines.append(handler.lines)
    logger.setLevel(level)
    assert lines[0] == lines[1] == ['127.0.0.1:5000 - "POST /v1/x HTTP/1.1" 200']
