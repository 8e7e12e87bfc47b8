"""Builds the one pooled httpx.AsyncClient an adapter keeps for its provider."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from adapters.config import HttpTimeouts
from adapters.sharded_transport import ShardedTransport


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
    Connections live in a ShardedTransport (several small pools, see its module) unless
    `transport` is given: the seam tests use, which then owns http2 and limits too.
    """
    timeout = httpx.Timeout(
        connect=timeouts.connect,
        read=timeouts.read,
        write=timeouts.read,
        pool=timeouts.pool,
    )
    if transport is None:
        transport = ShardedTransport(max_connections=max_connections, http2=http2)
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=dict(headers),
        timeout=timeout,
        transport=transport,
        # Provider calls never follow redirects: a redirect would resend the key elsewhere.
        follow_redirects=False,
    )
