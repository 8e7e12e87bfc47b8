"""Builds the one pooled httpx.AsyncClient an HTTP backend keeps for its provider.

The transport under httpx was chosen by measurement (bench/results/transports.md):
HTTP/1.1 goes through aiohttp's connection pool (httpx-aiohttp), which costs less per call
and per read than httpcore's and survives cancellation at any point; HTTP/2, which
aiohttp does not speak, through httpx's own transport. The proxy is decided once, here:
the config's URL, or HTTPS_PROXY / HTTP_PROXY / NO_PROXY for the provider's base URL.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Mapping
from functools import cache

import httpx
from httpx_aiohttp import AiohttpTransport
from opentelemetry import propagate, trace

from adapters.config import HttpProviderConfig


def build_http_client(
    config: HttpProviderConfig,
    *,
    headers: Mapping[str, str],
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A client shared by every call of one backend.

    `read` bounds each wait for bytes once a response streams; `first_byte` and the pool
    wait are enforced by the backend (they span more than one httpx step). `transport` is
    the seam tests use; it then owns HTTP/2, limits and proxies too.
    """
    timeouts = config.timeouts
    timeout = httpx.Timeout(
        connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.pool
    )
    if transport is None:
        transport = build_transport(config)
    return httpx.AsyncClient(
        base_url=config.base_url.rstrip("/"),
        headers=dict(headers),
        timeout=timeout,
        transport=transport,
        # The proxy is the transport's, decided in build_transport; nothing else reads env.
        trust_env=False,
        # Provider calls never follow redirects: a redirect would resend the key elsewhere.
        follow_redirects=False,
        # W3C traceparent to the provider (or vLLM) while tracing is on; no hook when off.
        event_hooks={"request": [_inject_trace_context]} if _tracing() else None,
    )


def _tracing() -> bool:
    # The API's stand-in until a composition root installs an SDK provider.
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


async def _inject_trace_context(request: httpx.Request) -> None:
    propagate.inject(request.headers)


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
    return AiohttpTransport(verify=_tls_context(), limits=limits, proxy=proxy)


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
