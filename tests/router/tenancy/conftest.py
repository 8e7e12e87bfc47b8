"""Fixtures for the tenancy tests: a clean Redis client on the session's private server."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from router.tenancy.config import TenantConfig, TenantLimits
from tests.support.redis_server import RedisServer


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


def noon_today() -> float:
    """Noon (UTC) of the real today: Redis expires keys on its own clock, so a test's wall
    clock must stay near the real one, and noon keeps day boundaries out of reach."""
    today = dt.datetime.now(dt.UTC).date()
    return dt.datetime.combine(today, dt.time(12), dt.UTC).timestamp()


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float | None = None) -> None:
        self.now = noon_today() if now is None else now

    def __call__(self) -> float:
        return self.now


def tenant(**limits: int) -> TenantConfig:
    return TenantConfig(limits=TenantLimits(**limits))  # type: ignore[arg-type]
