"""The one Redis client of the tenancy package, and the errors that mean "unreachable"."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from router.tenancy.store import StoreUnavailable

# What an outage looks like from redis-py: refused or dropped connections, timeouts, and a
# server still loading its data after a restart.
UNREACHABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    OSError,
)


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """A pooled client that fails fast (bounded connect and command time) instead of hanging
    the request path while Redis is down."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry_on_timeout=False,
        health_check_interval=0,
        decode_responses=False,
    )


@contextmanager
def unreachable_as_store_error() -> Iterator[None]:
    try:
        yield
    except UNREACHABLE as exc:
        raise StoreUnavailable(str(exc) or type(exc).__name__) from exc


def lua(name: str) -> str:
    """The text of a Lua script shipped in router/tenancy/lua/."""
    return resources.files("router.tenancy").joinpath("lua", name).read_text(encoding="utf-8")
