"""A raw TCP server on a free port for the HTTP/1.1 client's tests: each test writes the
exact bytes of its responses (cut, malformed or cut short) that no real server would send
on demand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from bench.http1 import Http1Client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body (the client always sends Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, timeout_s: float = 5.0
) -> AsyncIterator[tuple[Http1Client, list[int]]]:
    """A server on a free port running `handler` per connection; yields a client of it and
    the list of connections accepted so far (one int per connection)."""
    accepted: list[int] = []
    handlers: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await handler(reader, writer)
        # The client went away, or the test ended: the connection's work is over either way
        # (a cancelled handler would make asyncio's stream server log an error).
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Http1Client("127.0.0.1", port, timeout_s=timeout_s)
    try:
        yield client, accepted
    finally:
        client.close()
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers)
        await server.wait_closed()


def content_length(body: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n" + extra
        + b"content-length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Edge: 0.5\r\n\r\n"
