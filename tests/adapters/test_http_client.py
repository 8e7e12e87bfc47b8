"""The pooled client each adapter keeps: limits, timeouts, redirects, sharded pools."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from adapters.config import HttpTimeouts
from adapters.http_client import build_http_client
from adapters.sharded_transport import ShardedTransport
from tests.adapters.fakes.server import Reply, running_fake


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
        transport = client._transport
        assert isinstance(transport, ShardedTransport)
        assert transport.in_flight == (0,)  # 7 connections fit one shard
        pool = transport._shards[0]._pool
        assert pool._max_connections == 7
        assert pool._http2 is True
    finally:
        await client.aclose()


async def test_sharded_transport_spreads_concurrent_requests_and_reuses_connections() -> None:
    transport = ShardedTransport(max_connections=6, http2=False, shard_connections=2)
    async with running_fake() as fake, httpx.AsyncClient(transport=transport) as client:
        fake.enqueue(*(Reply.cassette("openai/stream_text") for _ in range(9)))
        url = f"{fake.base_url}/v1/chat/completions"
        async with contextlib.AsyncExitStack() as open_streams:
            for _ in range(6):
                await open_streams.enter_async_context(client.stream("POST", url))
            assert transport.in_flight == (2, 2, 2)
        assert transport.in_flight == (0, 0, 0)  # closing unread responses releases them
        for _ in range(3):
            response = await client.post(url)
            assert response.status_code == 200
        assert transport.in_flight == (0, 0, 0)
        # The six abandoned mid-body cannot be reused; the three calls after share one.
        assert fake.connections == 7


async def test_sharded_transport_releases_a_slot_when_the_request_fails() -> None:
    transport = ShardedTransport(max_connections=4, http2=False, shard_connections=2)
    async with running_fake() as fake:
        dead_url = f"{fake.base_url}/v1/chat/completions"
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(dead_url)  # the fake is gone: connection refused
    assert transport.in_flight == (0, 0)


@pytest.mark.parametrize(("max_connections", "shards"), [(10, 2), (100, 13), (16, 2), (3, 1)])
async def test_sharded_transport_never_allows_more_connections_than_configured(
    max_connections: int, shards: int
) -> None:
    transport = ShardedTransport(max_connections=max_connections, http2=False)
    try:
        sizes = [shard._pool._max_connections for shard in transport._shards]
        assert len(sizes) == shards
        assert sum(sizes) == max_connections
        assert max(sizes) - min(sizes) <= 1
    finally:
        await transport.aclose()
