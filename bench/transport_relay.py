"""A relay for comparing httpx transports: the minimal relay's aiohttp server, with the
upstream call made by an httpx.AsyncClient over the transport under test.

`python -m bench.transport_relay --transport NAME --upstream URL [--aggregate]` prints
`relay on http://HOST:PORT`. Streaming calls relay each upstream read as one write (each
event's JSON re-encoded with orjson); non-streaming calls make a non-streaming upstream
call, or with `--aggregate` stream from the upstream and build the answer from the chunks
(the other way a gateway can serve a non-streaming caller).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import orjson
from aiohttp import web

from bench import aiohttp_server
from bench.minimal_relay import CHAT_PATH, READY_PREFIX, reencode_events

MAX_CONNECTIONS = 100
_SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


def _httpx_default() -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=100)
    return httpx.AsyncHTTPTransport(limits=limits)


def _httpx_sharded() -> httpx.AsyncBaseTransport:
    from bench.sharded_transport import ShardedTransport

    return ShardedTransport(max_connections=MAX_CONNECTIONS, http2=False)


def _httpx_aiohttp() -> httpx.AsyncBaseTransport:
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=100)
    return AiohttpTransport(limits=limits)


def _httpx_curl_cffi() -> httpx.AsyncBaseTransport:
    from httpx_curl_cffi import AsyncCurlTransport

    return AsyncCurlTransport(max_connections=MAX_CONNECTIONS)


# name -> what builds it; the names are the bench's report labels.
TRANSPORTS: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
    "httpx": _httpx_default,
    "httpx-sharded": _httpx_sharded,
    "httpx-aiohttp": _httpx_aiohttp,
    "httpx-curl-cffi": _httpx_curl_cffi,
}


def aggregate(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A `chat.completion` built from the `chat.completion.chunk`s of one streamed answer."""
    if not events:
        raise ValueError("no chunks")
    text: list[str] = []
    finish: str | None = None
    usage: dict[str, Any] | None = None
    for chunk in events:
        for choice in chunk.get("choices") or ():
            if content := choice["delta"].get("content"):
                text.append(content)
            finish = choice.get("finish_reason") or finish
        usage = chunk.get("usage") or usage
    head = events[0]
    return {
        "id": head["id"],
        "object": "chat.completion",
        "created": head["created"],
        "model": head["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(text)},
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }


def chunks_of(buffer: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """The decoded chunks of the complete SSE events in `buffer`, and the incomplete rest."""
    *frames, rest = buffer.split(b"\n\n")
    return [
        orjson.loads(f[6:]) for f in frames if f.startswith(b"data: ") and f[6:] != b"[DONE]"
    ], rest


class Relay:
    """Lifecycle: built on the serving loop, serves `chat`, `aclose()` at cleanup."""

    def __init__(self, upstream_url: str, transport: httpx.AsyncBaseTransport, agg: bool):
        self._http = httpx.AsyncClient(
            base_url=upstream_url.rstrip("/"),
            transport=transport,
            timeout=httpx.Timeout(60.0),
            headers={"content-type": "application/json"},
        )
        self._aggregate = agg

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        request_json = orjson.loads(body)
        if request_json.get("stream"):
            return await self._stream(request, body)
        if self._aggregate:
            return await self._aggregated(request_json)
        upstream = await self._http.post("/chat/completions", content=body)
        answer = upstream.content
        if upstream.status_code == 200:
            answer = orjson.dumps(orjson.loads(answer))
        return web.Response(
            status=upstream.status_code, body=answer, content_type="application/json"
        )

    async def _stream(self, request: web.Request, body: bytes) -> web.StreamResponse:
        async with self._http.stream("POST", "/chat/completions", content=body) as upstream:
            if upstream.status_code != 200:
                return web.Response(
                    status=upstream.status_code,
                    body=await upstream.aread(),
                    content_type="application/json",
                )
            response = web.StreamResponse(headers=_SSE_HEADERS)
            await response.prepare(request)
            rest = b""
            async for chunk in upstream.aiter_raw():
                out, rest = reencode_events(rest + chunk)
                if out:
                    await response.write(out)
            await response.write_eof()
            return response

    async def _aggregated(self, request_json: dict[str, Any]) -> web.Response:
        streamed = {**request_json, "stream": True, "stream_options": {"include_usage": True}}
        events: list[dict[str, Any]] = []
        async with self._http.stream(
            "POST", "/chat/completions", content=orjson.dumps(streamed)
        ) as upstream:
            if upstream.status_code != 200:
                return web.Response(
                    status=upstream.status_code,
                    body=await upstream.aread(),
                    content_type="application/json",
                )
            rest = b""
            async for chunk in upstream.aiter_raw():
                chunks, rest = chunks_of(rest + chunk)
                events.extend(chunks)
        return web.Response(body=orjson.dumps(aggregate(events)), content_type="application/json")

    async def aclose(self) -> None:
        await self._http.aclose()


async def build_app(upstream_url: str, transport: str, agg: bool) -> web.Application:
    relay = Relay(upstream_url, TRANSPORTS[transport](), agg)
    app = web.Application()
    app.router.add_post(CHAT_PATH, relay.chat)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        yield
        await relay.aclose()

    app.cleanup_ctx.append(lifetime)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a relay over one httpx transport (bench)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://h:p/v1")
    parser.add_argument("--transport", required=True, choices=sorted(TRANSPORTS))
    parser.add_argument(
        "--aggregate",
        action="store_true",
        help="serve non-streaming calls by streaming from the upstream and aggregating",
    )
    args = parser.parse_args(argv)
    aiohttp_server.serve(
        lambda: build_app(args.upstream, args.transport, args.aggregate),
        args.listen,
        READY_PREFIX,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
