"""The two limiters (the Lua script in Redis, and the local fallback in Python) implement
one semantics; over random sequences of reservations, settlements and time, they agree on
every verdict and every remaining figure (hypothesis)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imesh.errors import MeshError
from router.tenancy.config import TenantLimits
from router.tenancy.limits import Grant, Limiter, RedisLimiter, Reservation
from router.tenancy.local_limits import LocalLimiter
from tests.router.tenancy.support import Clock
from tests.support.redis_server import RedisServer

limits = st.builds(
    TenantLimits,
    requests_per_minute=st.one_of(st.none(), st.integers(1, 10)),
    tokens_per_minute=st.one_of(st.none(), st.integers(50, 800)),
    tokens_per_day=st.one_of(st.none(), st.integers(100, 1500)),
    budget_per_day=st.one_of(st.none(), st.decimals(places=6, min_value=0, max_value="0.002")),
)

reserve = st.tuples(
    st.just("reserve"),
    st.sampled_from(["a", "b"]),
    st.integers(0, 250),  # tokens
    st.integers(0, 300),  # cost micros
)
settle = st.tuples(st.just("settle"), st.integers(0, 20), st.integers(0, 250), st.integers(0, 900))
advance = st.tuples(st.just("advance"), st.integers(0, 70), st.just(0), st.just(0))
operations = st.lists(st.one_of(reserve, settle, advance), min_size=1, max_size=40)

Outcome = tuple[str, int | None, int | None]


async def outcome(
    limiter: Limiter, limits: TenantLimits, reservation: Reservation
) -> tuple[Outcome, Grant | None]:
    try:
        grant = await limiter.reserve(limits, reservation)
    except MeshError as exc:
        left = exc.metadata.get("x-ratelimit-remaining-requests")
        return (exc.reason.value, int(left) if left else None, None), None
    figures = grant.figures
    return ("admitted", figures.remaining_requests, figures.remaining_tokens), grant


async def run(url: str, limits: TenantLimits, ops: list[tuple[str, object, int, int]]) -> None:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    clock = Clock()
    limiters: list[Limiter] = [
        RedisLimiter(client, reservation_ttl_s=10**6, wall_clock=clock),
        LocalLimiter(wall_clock=clock),
    ]
    held: list[list[Grant]] = [[], []]
    try:
        for step, (op, arg, tokens, cost) in enumerate(ops):
            if op == "advance":
                clock.now += int(str(arg))
            elif op == "reserve":
                results = [
                    await outcome(lim, limits, Reservation(str(arg), tokens, cost))
                    for lim in limiters
                ]
                assert results[0][0] == results[1][0], f"step {step}: {ops[: step + 1]}"
                for i, (_, grant) in enumerate(results):
                    if grant is not None:
                        held[i].append(grant)
            elif held[0]:
                index = int(str(arg)) % len(held[0])
                for i, lim in enumerate(limiters):
                    await lim.settle(held[i].pop(index), tokens, cost)
    finally:
        await client.aclose()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(limits=limits, ops=operations)
def test_redis_and_local_limiters_agree(
    redis_server: RedisServer, limits: TenantLimits, ops: list[tuple[str, object, int, int]]
) -> None:
    asyncio.run(run(redis_server.url, limits, ops))
