"""No usage event is dropped unread: the stream is trimmed only below what the aggregators
acknowledged, and an outage spills to disk from the flusher, never from a request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from router.tenancy.usage_events import StreamUsageSink
from tests.router.tenancy.test_usage import NS, aggregator, drain, event, rows, sink
from tests.support.redis_server import free_port

STREAM = NS + "events"


async def test_events_no_aggregator_has_read_yet_are_all_counted(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    out = sink(redis_client, tmp_path / "spill.jsonl")
    for _ in range(3000):  # the aggregators are down (or far behind) meanwhile
        out.emit(event(tokens=1))
    assert await out.flush()
    agg = aggregator(redis_client)
    await drain(agg)
    assert agg.counted == 3000
    [row] = await rows(redis_client, "t")
    assert row.attempts == 3000


async def test_trim_drops_only_what_the_group_acknowledged(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    out = sink(redis_client, tmp_path / "spill.jsonl")
    for n in range(10):
        out.emit(event(tokens=n))
    assert await out.flush()
    crashed = aggregator(redis_client, consumer="crashed", batch=3)
    await crashed._ensure_group()
    assert len(await crashed._read(">")) == 3  # read, never acknowledged
    live = aggregator(redis_client, consumer="live")
    await drain(live)  # the 7 others, acknowledged
    assert await live.trim() == 0  # the oldest entries are still pending
    assert await redis_client.xlen(STREAM) == 10
    assert live.backlog == 0
    successor = aggregator(redis_client, consumer="successor", claim_idle_s=0)
    await drain(successor)
    assert await successor.trim() == 10
    assert await redis_client.xlen(STREAM) == 0
    [row] = await rows(redis_client, "t")
    assert (row.attempts, row.prompt_tokens) == (10, sum(range(10)))


async def test_an_outage_spills_from_the_flusher_not_from_emit(tmp_path: Path) -> None:
    unreachable = aioredis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2
    )
    spill = tmp_path / "spill.jsonl"
    out = StreamUsageSink(
        unreachable,
        stream=STREAM,
        buffer_events=5,
        spill_path=spill,
        flush_interval_s=0.01,
    )
    for _ in range(20):
        out.emit(event())  # a request's settle: no disk write here
    assert not spill.exists()
    await out.start()
    try:
        for _ in range(1000):  # the flusher's next turns: a failed send, then the spill
            if out.spilled >= 20:
                break
            await asyncio.sleep(0.01)
        assert len(spill.read_text().splitlines()) == 20
    finally:
        await out.aclose()
        await unreachable.aclose()


async def test_a_spill_larger_than_a_batch_is_sent_whole(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"
    spill.write_text("".join(event(tokens=1).to_json() + "\n" for _ in range(1234)))
    out = sink(redis_client, spill)
    assert await out.flush()
    assert await redis_client.xlen(STREAM) == 1234
    assert out.pending == 0
