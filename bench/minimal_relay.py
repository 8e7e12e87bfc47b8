"""The floor a Python hop cannot beat: an aiohttp server in front of an aiohttp client that
parses and re-encodes each SSE event's JSON with orjson, and does nothing else (no routing,
no accounting, no error mapping).

`python -m bench.minimal_relay --listen 127.0.0.1:0 --upstream URL` relays
`POST /v1/chat/completions` to `URL/chat/completions` and prints `relay on http://HOST:PORT`.
Everything one upstream read delivered goes out in one write.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence

import aiohttp
import orjson
from aiohttp import web

from bench import aiohttp_server

READY_PREFIX = "relay on "
CHAT_PATH = "/v1/chat/completions"
_UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)
_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
_DATA = b"data: "
_DONE = b"[DONE]"
_SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


def reencode_events(buffer: bytes) -> tuple[bytes, bytes]:
    """The complete SSE events in `buffer`, each data line's JSON decoded and encoded again,
    and the incomplete rest. Events are separated by a blank line (LF, as the mock and OpenAI
    send them); `[DONE]` and lines other than `data:` pass through unchanged."""
    *events, rest = buffer.split(b"\n\n")
    out = []
    for event in events:
        if event.startswith(_DATA) and event[6:] != _DONE:
            event = _DATA + orjson.dumps(orjson.loads(event[6:]))
        out.append(event + b"\n\n")
    return b"".join(out), rest


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[_SESSION]
    headers = {"content-type": "application/json"}
    async with session.post(request.app[_UPSTREAM], data=body, headers=headers) as upstream:
        if upstream.content_type != "text/event-stream":
            answer = await upstream.read()
            if upstream.status == 200:
                answer = orjson.dumps(orjson.loads(answer))
            return web.Response(
                status=upstream.status, body=answer, content_type="application/json"
            )
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        rest = b""
        async for chunk in upstream.content.iter_any():
            out, rest = reencode_events(rest + chunk)
            if out:
                await response.write(out)
        await response.write_eof()
        return response


async def build_app(upstream_url: str) -> web.Application:
    app = web.Application()
    app[_UPSTREAM] = upstream_url.rstrip("/") + "/chat/completions"
    app.router.add_post(CHAT_PATH, chat)

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector) as client:
            app[_SESSION] = client
            yield

    app.cleanup_ctx.append(session)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the minimal Python relay (bench floor)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://h:p/v1")
    args = parser.parse_args(argv)
    aiohttp_server.serve(lambda: build_app(args.upstream), args.listen, READY_PREFIX)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
