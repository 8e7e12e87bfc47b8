"""Limits in Redis (and the local fallback, which must agree): sliding windows, quotas,
budgets, reservations settled or released, and limits that hold across processes."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from imesh.errors import MeshError, Reason
from router.tenancy.config import TenantLimits
from router.tenancy.limits import Limiter, RedisLimiter, Reservation
from router.tenancy.local_limits import LocalLimiter
from tests.router.tenancy.support import Clock
from tests.support.redis_server import RedisServer


@pytest.fixture(params=["redis", "local"])
def limiter_and_clock(
    request: pytest.FixtureRequest, redis_client: aioredis.Redis
) -> tuple[Limiter, Clock]:
    clock = Clock()
    if request.param == "redis":
        return RedisLimiter(redis_client, reservation_ttl_s=60, wall_clock=clock), clock
    return LocalLimiter(wall_clock=clock), clock


async def refused(limiter: Limiter, limits: TenantLimits, r: Reservation) -> MeshError:
    with pytest.raises(MeshError) as caught:
        await limiter.reserve(limits, r)
    return caught.value


async def test_requests_per_minute_slide_with_the_window(limiter_and_clock) -> None:
    limiter, clock = limiter_and_clock
    limits = TenantLimits(requests_per_minute=3)
    for remaining in (2, 1, 0):
        grant = await limiter.reserve(limits, Reservation("t", 1, 0))
        assert grant.figures.remaining_requests == remaining
        clock.now += 10
    error = await refused(limiter, limits, Reservation("t", 1, 0))
    assert error.reason is Reason.RATE_LIMITED
    assert error.retry_after == pytest.approx(30, abs=1)  # the first request leaves at +60s
    assert error.metadata["x-ratelimit-remaining-requests"] == "0"
    clock.now += 31
    await limiter.reserve(limits, Reservation("t", 1, 0))


async def test_tokens_per_minute_count_reservations_then_settle_to_real_usage(
    limiter_and_clock,
) -> None:
    limiter, _ = limiter_and_clock
    limits = TenantLimits(tokens_per_minute=1000)
    grant = await limiter.reserve(limits, Reservation("t", 800, 0))
    error = await refused(limiter, limits, Reservation("t", 300, 0))
    assert error.reason is Reason.RATE_LIMITED
    await limiter.settle(grant, 100, 0)  # it spent far less than it reserved
    second = await limiter.reserve(limits, Reservation("t", 300, 0))
    assert second.figures.remaining_tokens == 600


async def test_day_quota_and_budget_refuse_before_the_call(limiter_and_clock) -> None:
    limiter, _ = limiter_and_clock
    limits = TenantLimits(tokens_per_day=1000, budget_per_day=Decimal("0.01"))
    grant = await limiter.reserve(limits, Reservation("t", 600, 4000))
    await limiter.settle(grant, 600, 9000)
    quota = await refused(limiter, limits, Reservation("t", 500, 0))
    assert quota.reason is Reason.QUOTA_EXCEEDED
    assert 0 < (quota.retry_after or 0) <= 86400
    budget = await refused(limiter, limits, Reservation("t", 100, 1001))
    assert budget.reason is Reason.BUDGET_EXCEEDED
    await limiter.reserve(limits, Reservation("t", 100, 1000))  # exactly the budget: admitted


async def test_tenants_do_not_share_limits(limiter_and_clock) -> None:
    limiter, _ = limiter_and_clock
    limits = TenantLimits(requests_per_minute=1)
    await limiter.reserve(limits, Reservation("a", 1, 0))
    await limiter.reserve(limits, Reservation("b", 1, 0))
    assert (await refused(limiter, limits, Reservation("a", 1, 0))).reason is Reason.RATE_LIMITED


async def test_a_reservation_never_settled_is_released_after_its_ttl(redis_client) -> None:
    clock = Clock()
    limiter = RedisLimiter(redis_client, reservation_ttl_s=30, wall_clock=clock)
    limits = TenantLimits(tokens_per_day=1000)
    await limiter.reserve(limits, Reservation("t", 900, 0))  # its router crashes
    assert (
        await refused(limiter, limits, Reservation("t", 200, 0))
    ).reason is Reason.QUOTA_EXCEEDED
    clock.now += 31
    late = await limiter.reserve(limits, Reservation("t", 200, 0))
    await limiter.settle(late, 150, 0)
    assert int(await redis_client.hget(late.keys[2], "tokens")) == 150


async def test_concurrent_streams_on_four_routers_overrun_the_quota_by_at_most_one_reservation(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    limit, reserve = 20_000, 900
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(4)]
    routers = [RedisLimiter(c, reservation_ttl_s=60) for c in clients]
    limits = TenantLimits(tokens_per_day=limit)
    rng = random.Random(7)
    spent: list[int] = []
    refusals: list[Reason] = []

    async def stream(i: int) -> None:
        router = routers[i % 4]
        while True:
            try:
                grant = await router.reserve(limits, Reservation("q", reserve, 0))
            except MeshError as exc:
                refusals.append(exc.reason)
                return
            await asyncio.sleep(rng.random() / 100)  # the stream runs
            used = rng.randint(100, reserve)
            spent.append(used)
            await router.settle(grant, used, 0)

    try:
        await asyncio.gather(*(stream(i) for i in range(50)))
    finally:
        for c in clients:
            await c.aclose()
    assert refusals == [Reason.QUOTA_EXCEEDED] * 50
    assert limit - reserve < sum(spent) <= limit + reserve
    [day_key] = await redis_client.keys("imesh:{q}:day:*")
    assert int(await redis_client.hget(day_key, "tokens") or 0) == sum(spent)


def test_rpm_and_tpm_hold_across_two_processes(redis_server: RedisServer) -> None:
    def worker(tenant: str, rpm: int, tpm: int, tokens: int) -> subprocess.Popen[str]:
        args = [redis_server.url, tenant, "40", str(rpm), str(tpm), str(tokens)]
        return subprocess.Popen(
            [sys.executable, "-m", "tests.router.tenancy.limiter_worker", *args],
            stdout=subprocess.PIPE,
            text=True,
        )

    # Requests per minute: 30 shared by two processes trying 40 each.
    by_requests = [worker("rpm-tenant", 30, 1_000_000, 1) for _ in range(2)]
    # Tokens per minute: 1000 tokens, 40 tokens a request -> 25 requests between both.
    by_tokens = [worker("tpm-tenant", 1000, 1000, 40) for _ in range(2)]
    granted_requests = sum(int(p.communicate(timeout=30)[0]) for p in by_requests)
    granted_tokens = sum(int(p.communicate(timeout=30)[0]) for p in by_tokens)
    assert granted_requests == 30
    assert granted_tokens == 25
