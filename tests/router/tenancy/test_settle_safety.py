"""Reservations never leak: not when the caller goes away while its grant is on the way
back from Redis, not when Redis is down at settle time, and a settle sent twice (its
reply lost, then retried) counts once."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from adapters.deadline import Deadline
from imesh.v1 import chat_pb2
from router.scope import Caller, RequestScope
from router.tenancy.admission import ReservationEstimator, TenantAdmitter
from router.tenancy.config import OverloadSettings, TenantConfig, TenantLimits
from router.tenancy.fallback import FallbackLimiter
from router.tenancy.limits import Grant, RedisLimiter, Reservation
from router.tenancy.local_limits import LocalLimiter
from router.tenancy.store import StoreUnavailable
from tests.router.tenancy.support import Clock, mesh


class SlowReply:
    """A Limiter whose reserve runs in Redis at once but whose reply waits for `gate`."""

    def __init__(self, inner: RedisLimiter) -> None:
        self.inner = inner
        self.reserved = asyncio.Event()
        self.gate = asyncio.Event()

    async def reserve(self, limits: TenantLimits, reservation: Reservation) -> Grant:
        grant = await self.inner.reserve(limits, reservation)
        self.reserved.set()
        await self.gate.wait()
        return grant

    async def settle(self, grant: Grant, tokens: int, cost_micros: int) -> None:
        await self.inner.settle(grant, tokens, cost_micros)


def _scope() -> RequestScope:
    request = chat_pb2.ChatInput(
        model="fast",
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="hi")])
        ],
        max_tokens=50,
    )
    return RequestScope("r1", Caller("k1", "team"), request, Deadline.after(10))


async def _day_tokens(client: aioredis.Redis) -> int:
    [key] = await client.keys("imesh:{team}:day:*")
    return int(await client.hget(key, "tokens") or 0)


async def test_a_caller_cancelled_while_reserving_leaves_no_reservation_held(
    redis_client: aioredis.Redis,
) -> None:
    slow = SlowReply(RedisLimiter(redis_client, reservation_ttl_s=900, wall_clock=Clock()))
    admitter = TenantAdmitter(
        {"team": TenantConfig(limits=TenantLimits(tokens_per_day=10_000))},
        FallbackLimiter(slow, LocalLimiter()),
        ReservationEstimator(mesh()),
        OverloadSettings(),
    )
    admitting = asyncio.create_task(admitter.admit(_scope()))
    await asyncio.wait_for(slow.reserved.wait(), 5)
    assert await redis_client.hlen("imesh:{team}:resv") == 1  # the script ran
    admitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admitting
    slow.gate.set()  # the grant arrives after its caller left
    await asyncio.wait_for(admitter.settled(), 5)
    assert await redis_client.hlen("imesh:{team}:resv") == 0
    assert await _day_tokens(redis_client) == 0
    assert admitter.in_flight == 0


class Flaky:
    """A Limiter that is unreachable while `down` (after the call may have run)."""

    def __init__(self, inner: RedisLimiter) -> None:
        self.inner = inner
        self.down = False

    async def reserve(self, limits: TenantLimits, reservation: Reservation) -> Grant:
        if self.down:
            raise StoreUnavailable("connection refused")
        return await self.inner.reserve(limits, reservation)

    async def settle(self, grant: Grant, tokens: int, cost_micros: int) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")
        await self.inner.settle(grant, tokens, cost_micros)


async def test_a_settle_sent_twice_counts_once(redis_client: aioredis.Redis) -> None:
    limiter = RedisLimiter(redis_client, reservation_ttl_s=900, wall_clock=Clock())
    grant = await limiter.reserve(TenantLimits(), Reservation("team", 100, 0))
    await limiter.settle(grant, 30, 0)
    await limiter.settle(grant, 30, 0)  # its first reply was lost: sent again
    assert await _day_tokens(redis_client) == 30


async def test_spend_settled_during_an_outage_reaches_redis_when_it_returns(
    redis_client: aioredis.Redis,
) -> None:
    wall, monotonic = Clock(), Clock(0.0)
    redis_limiter = RedisLimiter(redis_client, reservation_ttl_s=900, wall_clock=wall)
    flaky = Flaky(redis_limiter)
    limiter = FallbackLimiter(
        flaky, LocalLimiter(wall), carry=redis_limiter.carried, clock=monotonic
    )
    team = TenantConfig(limits=TenantLimits(tokens_per_day=10_000))
    before = await limiter.reserve(team, Reservation("team", 100, 0))
    flaky.down = True
    await limiter.settle(before, 30, 0)  # Redis went away: kept for later
    during = await limiter.reserve(team, Reservation("team", 100, 0))
    assert during.local
    await limiter.settle(during, 40, 0)  # spent on local limits
    assert limiter.unsettled == 2
    flaky.down = False
    monotonic.now += 2  # past retry_s: Redis is tried again
    after = await limiter.reserve(team, Reservation("team", 100, 0))
    assert not after.local
    await asyncio.wait_for(limiter.drained(), 5)
    assert limiter.unsettled == 0
    # 30 and 40 spent, 100 held by the request still running; nothing else held.
    assert await _day_tokens(redis_client) == 30 + 40 + 100
    assert await redis_client.hlen("imesh:{team}:resv") == 1
