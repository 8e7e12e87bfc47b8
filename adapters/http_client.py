"""Builds the one pooled httpx.AsyncClient an adapter keeps for its provider."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from adapters.config import HttpTimeouts


def build_http_client(
    *,
    base_url: str,
    headers: Mapping[str, str],
    timeouts: HttpTimeouts,
    http2: bool,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A client shared by every call of one adapter.

    `read` bounds each wait for bytes once a response streams; `first_byte` is enforced by
    the caller (it spans headers and the first event, which httpx has no knob for).
    `transport` is the seam tests use; when given, `http2` is the transport's business.
    """
    timeout = httpx.Timeout(
        connect=timeouts.connect,
        read=timeouts.read,
        write=timeouts.read,
        pool=timeouts.pool,
    )
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
    )
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=dict(headers),
        timeout=timeout,
        limits=limits,
        http2=http2 and transport is None,
        transport=transport,
        # Provider calls never follow redirects: a redirect would resend the key elsewhere.
        follow_redirects=False,
    )
