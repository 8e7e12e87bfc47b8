"""Serve an aiohttp app as a benchmark child process: bound (port 0 allowed), announced by one
stdout line carrying the real address, stopped by SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable

import uvloop
from aiohttp import web

from bench.upstream import parse_listen


async def _serve(app: web.Application, listen: str, ready_prefix: str) -> None:
    host, port = parse_listen(listen)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # bound here so port 0 can be announced as the real port
    bound = sock.getsockname()[1]
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"{ready_prefix}http://{host}:{bound}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        sock.close()


def serve(build: Callable[[], Awaitable[web.Application]], listen: str, ready_prefix: str) -> None:
    """Build the app on the serving loop (uvloop, like the mesh), then serve until a signal."""

    async def main() -> None:
        await _serve(await build(), listen, ready_prefix)

    uvloop.run(main())
