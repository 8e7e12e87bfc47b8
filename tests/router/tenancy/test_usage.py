"""Usage events: to the stream and rolled up exactly once, through a Redis outage and an
aggregator that crashes between reading and acknowledging."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from imesh.errors import MeshError
from router.tenancy.aggregator import GROUP, UsageAggregator
from router.tenancy.config import TenantConfig, TenantLimits
from router.tenancy.fallback import FallbackLimiter
from router.tenancy.limits import RedisLimiter, Reservation
from router.tenancy.local_limits import LocalLimiter
from router.tenancy.usage_event import UsageEvent
from router.tenancy.usage_events import SpillSlot, StreamUsageSink
from router.tenancy.usage_store import MemoryUsage, RedisUsageReader, UsageRow
from tests.support.redis_server import RedisServer

NS = "imesh:{usage}:"
_ids = itertools.count()


def event(
    tenant: str = "t", model: str = "fast", tokens: int = 10, **changes: object
) -> UsageEvent:
    n = next(_ids)
    base = UsageEvent(
        idempotency_key=f"req-{n}:1",
        at=time.time(),
        tenant=tenant,
        key_id="0123456789ab",
        request_id=f"req-{n}",
        attempt=1,
        hedge=False,
        model=model,
        deployment="dep",
        outcome="success",
        prompt_tokens=tokens,
        completion_tokens=2 * tokens,
        cached_tokens=0,
        cost_micros=3 * tokens,
        latency_ms=5,
        ttft_ms=1,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def sink(client: aioredis.Redis, spill: Path, buffer_events: int = 10_000) -> StreamUsageSink:
    return StreamUsageSink(
        client,
        stream=NS + "events",
        buffer_events=buffer_events,
        spill_path=spill,
        flush_interval_s=0.01,
    )


def aggregator(client: aioredis.Redis, consumer: str = "agg-1", **kw: Any) -> UsageAggregator:
    return UsageAggregator(client, namespace=NS, dedupe_ttl_s=3600, consumer=consumer, **kw)


async def drain(agg: UsageAggregator) -> None:
    while await agg.step():
        pass


async def rows(client: aioredis.Redis, tenant: str) -> list[UsageRow]:
    today = dt.datetime.now(dt.UTC).date()
    return await RedisUsageReader(client, namespace=NS).usage(
        tenant, today - dt.timedelta(days=1), today + dt.timedelta(days=1)
    )


def test_an_event_survives_the_stream_encoding() -> None:
    original = event(hedge=True, outcome="cancelled", ttft_ms=-1)
    assert UsageEvent.from_fields(original.to_fields()) == original
    assert UsageEvent.from_json(original.to_json()) == original


async def test_events_are_rolled_up_per_tenant_model_and_day_and_duplicates_count_once(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    out = sink(redis_client, tmp_path / "spill.jsonl")
    first = event(tokens=10)
    for e in (first, event(tokens=20), event(model="smart", tokens=5), event(tenant="other")):
        out.emit(e)
    out.emit(first)  # a replayed duplicate
    assert await out.flush()
    agg = aggregator(redis_client)
    await drain(agg)
    assert agg.counted == 4
    [fast, smart] = await rows(redis_client, "t")
    assert (fast.model, fast.attempts, fast.prompt_tokens, fast.cost_micros) == ("fast", 2, 30, 90)
    assert (smart.model, smart.attempts, smart.completion_tokens) == ("smart", 1, 10)
    assert await redis_client.xpending(NS + "events", GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_an_aggregator_that_crashed_between_read_and_ack_loses_and_doubles_nothing(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    out = sink(redis_client, tmp_path / "spill.jsonl")
    emitted = [event(tokens=n) for n in range(1, 31)]
    for e in emitted:
        out.emit(e)
    assert await out.flush()
    await aggregator(redis_client).step()  # creates the group, counts a first batch
    for e in emitted[:5]:  # and the sink replays some (a half-sent batch sent again)
        out.emit(e)
    assert await out.flush()
    # A consumer reads entries, then dies before rolling them up or acknowledging.
    crashed = aggregator(redis_client, consumer="crashed", batch=7)
    await crashed._ensure_group()
    read = await crashed._read(">")
    assert len(read) == 5  # the replayed duplicates, now pending at a dead consumer
    more = [event(tokens=100) for _ in range(3)]
    for e in more:
        out.emit(e)
    assert await out.flush()
    # Its replacement (a new name) claims the idle entries; then the rest flows.
    successor = aggregator(redis_client, consumer="successor", claim_idle_s=0)
    await drain(successor)
    [row] = await rows(redis_client, "t")
    assert row.attempts == len(emitted) + len(more)
    assert row.prompt_tokens == sum(e.prompt_tokens for e in emitted + more)
    assert (await redis_client.xpending(NS + "events", GROUP))["pending"] == 0


async def test_a_restarted_aggregator_finishes_its_own_pending_entries(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    out = sink(redis_client, tmp_path / "spill.jsonl")
    for n in range(10):
        out.emit(event(tokens=n))
    assert await out.flush()
    first = aggregator(redis_client, consumer="router-1")
    await first._ensure_group()
    assert len(await first._read(">")) == 10  # read, then the process died
    await drain(aggregator(redis_client, consumer="router-1"))  # same name after restart
    [row] = await rows(redis_client, "t")
    assert (row.attempts, row.prompt_tokens) == (10, sum(range(10)))


async def test_redis_killed_mid_run_then_restarted_loses_and_doubles_no_usage(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    client = aioredis.Redis.from_url(
        fresh_redis.url, socket_timeout=0.2, socket_connect_timeout=0.2
    )
    # A durable Redis, as production runs it: what was written survives the restart.
    await client.config_set("save", "1 1")
    spill = tmp_path / "spill.jsonl"
    out = sink(client, spill, buffer_events=20)  # small: the outage spills to disk
    await out.start()
    agg = aggregator(client, block_s=0.05)
    agg_task = asyncio.create_task(agg.run())
    limiter = FallbackLimiter(
        RedisLimiter(client, reservation_ttl_s=60), LocalLimiter(), retry_s=0.05
    )
    tenant = TenantConfig(limits=TenantLimits(requests_per_minute=100_000))
    completed: list[UsageEvent] = []

    async def request(n: int) -> None:
        grant = await limiter.reserve(tenant, Reservation("t", 50, 0))
        e = event(tokens=n % 7 + 1)
        out.emit(e)
        completed.append(e)
        await limiter.settle(grant, e.prompt_tokens + e.completion_tokens, e.cost_micros)

    try:
        for n in range(60):
            await request(n)
            await asyncio.sleep(0.002)
        await asyncio.to_thread(fresh_redis.stop)
        for n in range(60, 160):  # the service continues: admitted on local limits
            await request(n)
            await asyncio.sleep(0.002)
        assert limiter.outages == 1
        assert limiter.fallback_admissions > 0
        assert out.spilled > 0
        await asyncio.to_thread(fresh_redis.start)
        for n in range(160, 200):
            await request(n)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            total = sum(r.attempts for r in await _rows_or_empty(client))
            if total == len(completed) and out.pending == 0:
                break
            await asyncio.sleep(0.05)
        [row] = await rows(client, "t")
        assert row.attempts == len(completed) == 200
        assert row.prompt_tokens == sum(e.prompt_tokens for e in completed)
        assert row.cost_micros == sum(e.cost_micros for e in completed)
    finally:
        agg_task.cancel()
        await asyncio.gather(agg_task, return_exceptions=True)
        await out.aclose()
        await client.aclose()


async def _rows_or_empty(client: aioredis.Redis) -> list[UsageRow]:
    try:
        return await rows(client, "t")
    except Exception:
        return []


async def test_fail_closed_tenants_are_refused_while_redis_is_down(
    fresh_redis: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(
        fresh_redis.url, socket_timeout=0.2, socket_connect_timeout=0.2
    )
    limiter = FallbackLimiter(RedisLimiter(client, reservation_ttl_s=60), LocalLimiter())
    fail_closed = TenantConfig(on_redis_outage="fail_closed")
    try:
        await limiter.reserve(fail_closed, Reservation("t", 1, 0))
        await asyncio.to_thread(fresh_redis.stop)
        with pytest.raises(MeshError) as caught:
            await limiter.reserve(fail_closed, Reservation("t", 1, 0))
        assert caught.value.code.name == "UNAVAILABLE"
        await limiter.reserve(TenantConfig(), Reservation("t", 1, 0))  # fail-open: admitted
    finally:
        await client.aclose()


async def test_memory_usage_rolls_up_as_it_records() -> None:
    ledger = MemoryUsage()
    first = event(tokens=4)
    for e in (first, first, event(tokens=6), event(tenant="other")):
        ledger.emit(e)
    today = dt.datetime.now(dt.UTC).date()
    [row] = await ledger.usage("t", today, today)
    assert (row.attempts, row.prompt_tokens) == (2, 10)


async def test_routers_sharing_a_spill_directory_get_their_own_files_and_adopt_leftovers(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    first, second = SpillSlot.claim(tmp_path), SpillSlot.claim(tmp_path)
    assert first.path != second.path
    left = event(tokens=9)
    first.path.write_text(left.to_json() + "\n")  # a router stopped during an outage
    first.release()
    adopter = SpillSlot.claim(tmp_path)
    assert adopter.path == first.path
    out = sink(redis_client, adopter.path)
    assert out.pending == 1
    assert await out.flush()
    await drain(aggregator(redis_client))
    [row] = await rows(redis_client, "t")
    assert row.prompt_tokens == 9
    second.release()
    adopter.release()
