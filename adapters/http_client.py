"""ProviderHttp: one provider's HTTP, through httpx's transport API.

httpx is the client API (requests, responses, transports and their errors), but calls go
straight to the transport: a provider call uses none of AsyncClient's per-call machinery
(redirects would resend the key elsewhere, a cookie jar would carry one tenant's cookies
into another's calls, there is no auth flow), and skipping it saves about a fifth of the
adapter's CPU per request (measured: URL merging, cookie extraction, three send layers).

The transport was chosen by measurement (bench/results/transports.md, README "Connections
and overload"): HTTP/1.1 goes through aiohttp's pool (httpx-aiohttp), which costs about a
third of httpcore's CPU per relayed token and survives cancellation at any point; HTTP/2,
which aiohttp does not speak, through httpx's own transport. The proxy is decided once,
here: the config's URL, or HTTPS_PROXY / HTTP_PROXY / NO_PROXY for the provider's base URL.
"""

from __future__ import annotations

import math
import ssl
import urllib.request
from collections.abc import Mapping
from functools import cache

import httpx
from opentelemetry import propagate, trace

from adapters.aiohttp_transport import PreparedAiohttpTransport
from adapters.config import HttpProviderConfig

_USER_AGENT = "inference-mesh"


class ProviderHttp:
    """Lifecycle: built once per backend, shared by every call, `aclose()` at shutdown
    (closes the pool). `transport` is the seam tests use; it then owns HTTP/2, limits and
    proxies too."""

    def __init__(
        self,
        config: HttpProviderConfig,
        *,
        headers: Mapping[str, str],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = config.base_url.rstrip("/")
        self.transport = transport if transport is not None else build_transport(config)
        self.headers = httpx.Headers(
            {"accept": "*/*", "user-agent": _USER_AGENT, "content-type": "application/json"}
        )
        self.headers.update(headers)
        timeouts = config.timeouts
        # `read` bounds each wait for bytes once a response streams; `first_byte` and the
        # pool wait are the backend's (they span more than one transport step).
        self.timeout = httpx.Timeout(
            connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.pool
        ).as_dict()
        self._read = timeouts.read
        # (path, per-call headers) -> the URL and every header but the body's length: the
        # same for every call of a kind, so built once (a handful of keys per provider).
        self._heads: dict[object, tuple[httpx.URL, httpx.Headers]] = {}
        # W3C traceparent to the provider (or vLLM) while tracing is on; nothing when off.
        self._traced = _tracing()

    def request(
        self,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> httpx.Request:
        """A POST of `body` to the base URL + `path`. `read_timeout` stretches the read
        timeout for this call when longer (a non-streaming answer is one long silence;
        `math.inf`: keep the configured one)."""
        key = (path, tuple(headers.items())) if headers else path
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = self._head(path, headers)
        url, all_headers = head
        all_headers = all_headers.copy()
        all_headers["content-length"] = str(len(body))
        if self._traced:
            propagate.inject(all_headers)  # the current span: the call's attempt
        timeout = self.timeout
        if read_timeout is not None and self._read < read_timeout < math.inf:
            timeout = {**timeout, "read": read_timeout}
        # `stream=` takes the headers as given (Host and Content-Length are in them):
        # `content=` would rebuild them all per call.
        request = httpx.Request(
            "POST",
            url,
            headers=all_headers,
            stream=httpx.ByteStream(body),
            extensions={"timeout": timeout},
        )
        request.read()
        return request

    def _head(
        self, path: str, headers: Mapping[str, str] | None
    ) -> tuple[httpx.URL, httpx.Headers]:
        url = httpx.URL(self.base_url + path)
        head = httpx.Headers({"host": url.netloc.decode("ascii")})
        head.update(self.headers)
        if headers:
            head.update(headers)
        return url, head

    async def send(self, request: httpx.Request) -> httpx.Response:
        """The response once its status line and headers came; the body streams."""
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.transport.aclose()


def _tracing() -> bool:
    # The API's stand-in until a composition root installs an SDK provider.
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def build_transport(config: HttpProviderConfig) -> httpx.AsyncBaseTransport:
    # The backend's ConnectionGate keeps calls at max_connections, so the pool never waits.
    limits = httpx.Limits(
        max_connections=config.max_connections, max_keepalive_connections=config.max_connections
    )
    proxy_url = proxy_for(config.base_url, config.proxy)
    proxy = httpx.Proxy(proxy_url) if proxy_url else None
    if config.http2:
        return httpx.AsyncHTTPTransport(
            verify=_tls_context(), limits=limits, http2=True, proxy=proxy
        )
    return PreparedAiohttpTransport(verify=_tls_context(), limits=limits, proxy=proxy)


def proxy_for(base_url: str, setting: str) -> str | None:
    """The proxy URL for calls to `base_url`, or None for a direct connection."""
    if setting == "direct":
        return None
    if setting != "env":
        return setting
    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies_environment()
    host = url.host if url.port is None else f"{url.host}:{url.port}"
    # proxy_bypass_environment is public in urllib.request, only missing from typeshed.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if proxies.get("no") and bypass(host, proxies):
        return None
    return proxies.get(url.scheme) or proxies.get("all")


@cache
def _tls_context() -> ssl.SSLContext:
    # One TLS context for every backend: building one loads the CA bundle (tens of ms).
    return httpx.create_ssl_context()
