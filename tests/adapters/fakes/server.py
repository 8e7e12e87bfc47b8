"""A fake provider: a raw asyncio HTTP/1.1 server on 127.0.0.1 port 0 replaying cassettes.

Raw sockets rather than a framework, so the bytes on the wire are exactly the cassette's,
a cut is a real dropped connection mid-body, a stall is real silence, and the server
sees the client hang up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

CASSETTES = Path(__file__).resolve().parent.parent / "cassettes"


@dataclass(frozen=True)
class Reply:
    """One scripted answer. A streamed body goes out one SSE event per chunk.

    `cut_after_events`: send that many events, then drop the connection.
    `stall_after_events`: send that many events, then stay silent until the client leaves.
    `stall_before_headers`: send nothing until the client leaves.
    `burst`: send the first N events in one write (one socket read for the client); the
    cut and stall counts then count the events after them.
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    streamed: bool = False
    cut_after_events: int | None = None
    stall_after_events: int | None = None
    stall_before_headers: bool = False
    burst: int = 0

    @classmethod
    def cassette(cls, name: str, **changes: Any) -> Reply:
        """Loads cassettes/NAME.json: status, headers, and body (JSON), body_text, or
        body_file (a sibling file sent byte for byte, streamed when it is .sse)."""
        spec = json.loads((CASSETTES / f"{name}.json").read_text())
        body: bytes
        streamed = False
        if "body_file" in spec:
            path = CASSETTES / spec["body_file"]
            body = path.read_bytes()
            streamed = path.suffix == ".sse"
        elif "body_text" in spec:
            body = spec["body_text"].encode()
        else:
            body = json.dumps(spec.get("body", {})).encode()
        reply = cls(
            status=spec.get("status", 200),
            headers=tuple((k, v) for k, v in spec.get("headers", {}).items()),
            body=body,
            streamed=streamed,
        )
        return replace(reply, **changes)

    def with_headers(self, **headers: str) -> Reply:
        extra = tuple((k.replace("_", "-"), v) for k, v in headers.items())
        return replace(self, headers=self.headers + extra)

    def events(self) -> list[bytes]:
        """The body split after each blank line, keeping every byte."""
        pieces: list[bytes] = []
        rest = self.body
        while rest:
            end = rest.find(b"\n\n")
            if end < 0:
                pieces.append(rest)
                break
            pieces.append(rest[: end + 2])
            rest = rest[end + 2 :]
        return pieces


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeProvider:
    """Replies in the order enqueued; with none left, answers 500."""

    replies: list[Reply] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected_at: float | None = None
    port: int = 0
    # TCP connections accepted: pooled clients reuse one across sequential calls.
    connections: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def enqueue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append(Recorded(method, path, headers, body))
        reply = self.replies.pop(0) if self.replies else Reply(status=500, body=b"{}")
        if reply.stall_before_headers:
            await self._await_hangup(reader)
            return False
        status_line = f"HTTP/1.1 {reply.status} Fake\r\n"
        out = [status_line] + [f"{k}: {v}\r\n" for k, v in reply.headers]
        if not reply.streamed:
            out.append(f"content-length: {len(reply.body)}\r\n\r\n")
            writer.write("".join(out).encode("latin-1") + reply.body)
            await writer.drain()
            return True
        out.append("transfer-encoding: chunked\r\n\r\n")
        writer.write("".join(out).encode("latin-1"))
        await writer.drain()
        events = reply.events()
        if reply.burst:
            burst, events = events[: reply.burst], events[reply.burst :]
            writer.write(b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in burst))
        for sent in range(len(events) + 1):
            if sent == reply.cut_after_events:
                writer.transport.abort()  # a dropped connection: no final chunk
                return False
            if sent == reply.stall_after_events:
                await self._await_hangup(reader)
                return False
            if sent < len(events):
                writer.write(b"%x\r\n%s\r\n" % (len(events[sent]), events[sent]))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _await_hangup(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass
        self.disconnected_at = time.monotonic()
        self.disconnected.set()


@contextlib.asynccontextmanager
async def running_fake() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
