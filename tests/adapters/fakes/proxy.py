"""A forwarding HTTP proxy on 127.0.0.1, port 0: records each request line it is asked to
forward (absolute-form, as clients send to a proxy), then pipes bytes both ways."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class FakeProxy:
    request_lines: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, version = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.request_lines.append(f"{method} {target}")
            authority = target.split("://", 1)[1].split("/", 1)[0]
            host, _, port = authority.partition(":")
            path = "/" + target.split("://", 1)[1].partition("/")[2]
            up_reader, up_writer = await asyncio.open_connection(host, int(port or 80))
            up_writer.write(
                f"{method} {path} {version}".encode() + b"\r\n" + head.split(b"\r\n", 1)[1]
            )
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def running_proxy() -> AsyncIterator[FakeProxy]:
    proxy = FakeProxy()
    server = await asyncio.start_server(proxy._client, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for task in list(proxy._tasks):
            task.cancel()
        for task in list(proxy._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await server.wait_closed()
