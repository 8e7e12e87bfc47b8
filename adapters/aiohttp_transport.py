"""PreparedAiohttpTransport: httpx-aiohttp's transport, minus the work it redid per call.

httpx-aiohttp's transport turns every httpx.Request into an aiohttp call from scratch: it
prints the URL for aiohttp to parse again (and to ask again for its host, origin, path and
credentials), builds a ClientTimeout and the proxy's arguments, looks up the body's payload
type, and wraps the call and every body read in a context manager that maps aiohttp's
errors to httpx's. A provider sends every call to the same few URLs with the same few
timeouts, so this keeps the parsed URL (yarl caches what aiohttp asks of it), the
ClientTimeouts and the proxy's arguments, builds the body's payload directly, and maps an
error only when one is raised. The pool, the error map and the response's release are
httpx-aiohttp's, unchanged; the session keeps no cookies (a provider's cookies must never
cross from one tenant's call to another's, and a jar costs a lookup per call).

The response is an httpx.Response whose plain (not content-encoded) body is read without
httpx's three nested async generators and their context managers: `aread()` is one aiohttp
read of the whole body, `aiter_bytes()` one iterator object over aiohttp's reads. Anything
else (an encoded body, a chunk size, a second read) takes httpx's own path.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
import yarl
from aiohttp import (
    BasicAuth,
    ClientResponse,
    ClientSession,
    ClientTimeout,
    DummyCookieJar,
    TCPConnector,
    hdrs,
)
from aiohttp.payload import BytesPayload
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AIOHTTP_EXC_MAP

# URLs and timeouts kept per transport: a provider uses a handful of each. A caller that
# makes a new URL object or timeout per call only refills the cache now and then.
_KEPT = 64
# Body reads are bounded as httpx-aiohttp's are (AiohttpResponseStream.CHUNK_SIZE).
_READ_SIZE = 16 * 1024
_HTTP11 = {"http_version": b"HTTP/1.1"}


class PreparedAiohttpTransport(AiohttpTransport):
    """Lifecycle: as httpx-aiohttp's AiohttpTransport (one per provider, `aclose()` at
    shutdown closes its session). A request whose body was not read into memory takes
    httpx-aiohttp's own path."""

    def __init__(
        self, *, verify: ssl.SSLContext, limits: httpx.Limits, proxy: httpx.Proxy | None
    ) -> None:
        super().__init__(verify=verify, limits=limits, proxy=proxy)
        # id(httpx.URL) -> (that URL, kept alive so the id stays its own; aiohttp's URL)
        self._urls: dict[int, tuple[httpx.URL, yarl.URL]] = {}
        self._timeouts: dict[tuple[float | None, float | None, float | None], ClientTimeout] = {}
        self._proxy: dict[str, Any] = {}
        if proxy is not None:
            self._proxy = {
                "proxy": str(proxy.url),
                "proxy_auth": BasicAuth(*proxy.auth) if proxy.auth else None,
                "proxy_headers": proxy.headers,
            }

    def get_client(self) -> ClientSession:
        # httpx-aiohttp's session, with no cookie jar (see the module docstring).
        limits = self.limits
        connector = TCPConnector(
            keepalive_timeout=limits.keepalive_expiry,
            ssl=self.ssl_context,
            limit=100 if limits.max_connections is None else limits.max_connections,
        )
        return ClientSession(connector=connector, cookie_jar=DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            body = request.content
        except httpx.RequestNotRead:
            return await super().handle_async_request(request)
        client = self.client
        if not isinstance(client, ClientSession):
            client = self.client = self.get_client()
        extensions = request.extensions
        try:
            response = await client.request(
                request.method,
                self._url(request.url),
                headers=request.headers,
                data=BytesPayload(body) if body else None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=self._timeout(extensions.get("timeout", {})),
                server_hostname=extensions.get("sni_hostname"),
                **self._proxy,
            )
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is None:
                raise
            raise mapped from exc
        if response.reason:
            info = {**_HTTP11, "reason_phrase": response.reason.encode()}
        else:
            info = dict(_HTTP11)
        return _Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response),
            request=request,
            extensions=info,
        )

    def _url(self, url: httpx.URL) -> yarl.URL:
        kept = self._urls.get(id(url))
        if kept is not None and kept[0] is url:
            return kept[1]
        if len(self._urls) >= _KEPT:
            self._urls.clear()
        parsed = yarl.URL(str(url))  # what aiohttp would parse from the printed URL
        self._urls[id(url)] = (url, parsed)
        return parsed

    def _timeout(self, timeout: dict[str, float | None]) -> ClientTimeout:
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        kept = self._timeouts.get(key)
        if kept is None:
            if len(self._timeouts) >= _KEPT:
                self._timeouts.clear()
            connect, read, pool = key
            # aiohttp's `connect` spans a pool wait AND a new connection's establishment
            # (TCP, TLS); httpx's `pool` bounds only the wait. Bounding both by `pool` alone
            # failed slow handshakes (a far provider, a starved machine) as timeouts after
            # `pool` seconds, a breaker verdict on a healthy upstream. The backend's
            # ConnectionGate keeps calls within the pool, so the wait part is near zero.
            both = None if connect is None or pool is None else connect + pool
            kept = self._timeouts[key] = ClientTimeout(
                sock_connect=connect, sock_read=read, connect=both
            )
        return kept


class _Response(httpx.Response):
    """An httpx.Response over one aiohttp response, read directly when its body is plain."""

    stream: _ResponseStream

    async def aread(self) -> bytes:
        if not self._direct(None):
            return await super().aread()
        self.is_stream_consumed = True
        response = self.stream.response
        try:
            body = await response.read()  # closes the connection if it fails or is cancelled
        except Exception as exc:
            mapped = _mapped_for(exc, self.request)
            if mapped is None:
                raise
            raise mapped from exc
        # The whole body came: aiohttp gave the connection back to its pool.
        self._content = body
        self._num_bytes_downloaded = len(body)
        self.is_closed = True
        return body

    def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        if not self._direct(chunk_size):
            return super().aiter_bytes(chunk_size)
        self.is_stream_consumed = True
        self._num_bytes_downloaded = 0
        return _Reads(self)

    async def aclose(self) -> None:
        if not self.is_closed:
            self.is_closed = True
            try:
                await self.stream.aclose()
            except httpx.RequestError as exc:
                exc.request = self.request  # as httpx's own close does
                raise

    def _direct(self, chunk_size: int | None) -> bool:
        # httpx decodes a content-encoded body (aiohttp is told not to) and re-chunks for
        # a chunk size; a consumed or closed stream raises httpx's errors, a read body is
        # given again.
        return (
            chunk_size is None
            and not self.is_stream_consumed
            and not self.is_closed
            and not hasattr(self, "_content")
            and hdrs.CONTENT_ENCODING not in self.stream.response.headers
        )


class _Reads:
    """The reads of a plain body, as httpx's `aiter_bytes()` gives them (each up to
    _READ_SIZE bytes; the response closed after the last): one object, not three nested
    async generators."""

    __slots__ = ("_content", "_response")

    def __init__(self, response: _Response) -> None:
        self._response = response
        self._content = response.stream.response.content

    def __aiter__(self) -> _Reads:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._content.read(_READ_SIZE)
        except Exception as exc:
            mapped = _mapped_for(exc, self._response.request)
            if mapped is None:
                raise
            raise mapped from exc
        if chunk:
            self._response._num_bytes_downloaded += len(chunk)
            return chunk
        await self._response.aclose()
        raise StopAsyncIteration


class _ResponseStream(httpx.AsyncByteStream):
    """The body of one aiohttp response, read as httpx-aiohttp's stream reads it, without
    its per-read iterator and context manager."""

    __slots__ = ("response",)

    def __init__(self, response: ClientResponse) -> None:
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self.response.content
        while True:
            try:
                chunk = await content.read(_READ_SIZE)
            except Exception as exc:
                mapped = _mapped(exc)
                if mapped is None:
                    raise
                raise mapped from exc
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        try:
            await self.response.__aexit__(None, None, None)
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is None:
                raise
            raise mapped from exc


def _mapped(exc: Exception) -> Exception | None:
    """The httpx error for an aiohttp one, as httpx-aiohttp maps it (the most specific
    match wins); None for any other error (it goes on as it is)."""
    mapped: type[Exception] | None = None
    for source, target in AIOHTTP_EXC_MAP.items():
        if isinstance(exc, source) and (mapped is None or issubclass(target, mapped)):
            mapped = target
    return None if mapped is None else mapped(str(exc))


def _mapped_for(exc: Exception, request: httpx.Request) -> Exception | None:
    """As `_mapped`, the error carrying `request` as httpx's own reads' errors do."""
    mapped = _mapped(exc)
    if isinstance(mapped, httpx.RequestError):
        mapped.request = request
    return mapped
