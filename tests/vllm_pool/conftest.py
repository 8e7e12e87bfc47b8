"""Fixtures of the GPU pool tests: a pool service on port 0 (memory or Redis), its
token, and (in test_vllm_e2e.py's fixtures) real vLLM engines."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
import redis.asyncio as aioredis

from adapters.pool_config import PoolServiceConfig
from imesh.v1 import pool_service_pb2_grpc
from tests.support.redis_server import RedisServer
from vllm_pool.server import PoolServer, start_pool_server

# The agent token (writes and reads) and the reader token (reads only).
TOKEN = "pool-token-for-tests"
TOKEN_ENV = "IMESH_TEST_POOL_TOKEN"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
READER_TOKEN = "pool-reader-token-for-tests"
READER_ENV = "IMESH_TEST_POOL_READER_TOKEN"
READ = (("authorization", f"Bearer {READER_TOKEN}"),)
REDIS_ENV = "IMESH_TEST_POOL_REDIS_URL"


@pytest.fixture
def pool_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """The agent token's reference (the reader token's variable is set too)."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(READER_ENV, READER_TOKEN)
    return f"env:{TOKEN_ENV}"


@pytest.fixture
def reader_token(pool_token: str) -> str:
    return f"env:{READER_ENV}"


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Waits for `check()` to hold, polling; fails the test after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        for _ in itertools.count():
            if await check():
                return
            await asyncio.sleep(0.05)


def service_config(token_ref: str, **changes: object) -> PoolServiceConfig:
    """A pool service on port 0 with `token_ref` as its agent token."""
    fields: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "agent_tokens": [token_ref],
        "reader_tokens": [f"env:{READER_ENV}"],
        "lease_s": 2.0,
        "heartbeat_s": 0.2,
        "poll_s": 0.05,
    }
    fields.update(changes)
    url = fields.pop("redis_url", None)
    if isinstance(url, str):  # the config takes it by reference, as a deployment gives it
        os.environ[REDIS_ENV] = url
        fields["redis_url"] = f"env:{REDIS_ENV}"
    return PoolServiceConfig.model_validate(fields)


async def flushed(redis_server: RedisServer) -> str:
    """The session Redis emptied of earlier tests' replicas; its URL."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    return redis_server.url


@pytest.fixture(params=["memory", "redis"])
async def pool_server(request: pytest.FixtureRequest, pool_token: str) -> AsyncIterator[PoolServer]:
    """A pool service with membership in memory, then in Redis."""
    redis_url = None
    if request.param == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        redis_url = await flushed(redis_server)
    server = await start_pool_server(service_config(pool_token, redis_url=redis_url))
    yield server
    await server.stop(0)


@pytest.fixture
async def pool_stub(
    pool_server: PoolServer,
) -> AsyncIterator[pool_service_pb2_grpc.PoolServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{pool_server.port}") as channel:
        yield pool_service_pb2_grpc.PoolServiceStub(channel)
