"""A local OTLP/HTTP collector stub for the bench's tracing mode: it accepts every export,
answers an empty success, and counts what it received (so the report can tell whether the
mesh exported anything at all).

`python -m bench.otlp_stub --listen 127.0.0.1:0` prints `otlp stub on http://HOST:PORT`;
`GET /stats` answers `{"exports": N, "bytes": B}`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from bench import aiohttp_server

READY_PREFIX = "otlp stub on "
EXPORT_PATHS = ("/v1/traces", "/v1/metrics", "/v1/logs")


@dataclass(slots=True)
class Received:
    exports: int = 0
    bytes: int = 0


_RECEIVED: web.AppKey[Received] = web.AppKey("received", Received)


async def export(request: web.Request) -> web.Response:
    received = request.app[_RECEIVED]
    received.exports += 1
    received.bytes += len(await request.read())
    # An empty Export*ServiceResponse is zero bytes of protobuf: full success.
    return web.Response(body=b"", content_type="application/x-protobuf")


async def stats(request: web.Request) -> web.Response:
    received = request.app[_RECEIVED]
    return web.json_response({"exports": received.exports, "bytes": received.bytes})


async def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_RECEIVED] = Received()
    for path in EXPORT_PATHS:
        app.router.add_post(path, export)
    app.router.add_get("/stats", stats)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OTLP/HTTP collector stub (counts exports)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    args = parser.parse_args(argv)
    aiohttp_server.serve(build_app, args.listen, READY_PREFIX)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
