"""The pooled client each adapter keeps: limits, timeouts and redirects from config."""

from __future__ import annotations

from adapters.config import HttpTimeouts
from adapters.http_client import build_http_client


async def test_client_takes_timeouts_limits_and_never_follows_redirects() -> None:
    timeouts = HttpTimeouts(connect=1.5, read=20, first_byte=10, pool=3)
    client = build_http_client(
        base_url="https://api.example.com/v1/",
        headers={"x-api-key": "k"},
        timeouts=timeouts,
        http2=True,
        max_connections=7,
    )
    try:
        assert client.timeout.connect == 1.5
        assert client.timeout.read == 20
        assert client.timeout.pool == 3
        assert client.follow_redirects is False
        assert str(client.base_url) == "https://api.example.com/v1/"
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert pool._max_connections == 7
        assert pool._http2 is True
    finally:
        await client.aclose()
