"""The Redis replica store's index: a live replica is always listed, whatever another
instance's prune raced with."""

from __future__ import annotations

import redis.asyncio as aioredis

from imesh.v1 import pool_service_pb2 as pb
from tests.support.redis_server import RedisServer
from tests.vllm_pool.conftest import flushed
from vllm_pool.redis_store import RedisReplicaStore


def spec(rid: str) -> pb.ReplicaSpec:
    return pb.ReplicaSpec(
        pool="gpu",
        replica_id=rid,
        transport=pb.REPLICA_TRANSPORT_HTTP,
        address=f"http://{rid}:8000",
        models=["tiny"],
    )


async def test_a_heartbeat_restores_an_index_entry_a_racing_prune_removed(
    redis_server: RedisServer,
) -> None:
    url = await flushed(redis_server)
    store = RedisReplicaStore.from_url(url)
    raw = aioredis.Redis.from_url(url)
    try:
        await store.register(spec("r1"), pb.ReplicaLoad(), lease_ms=30_000)
        # Another instance's list() read r1's hash empty just before r1 re-registered,
        # then removed r1 from the index: the hash lives, the index entry is gone.
        await raw.srem("imesh:pool:gpu:members", "r1")

        beat = await store.heartbeat("gpu", "r1", pb.ReplicaLoad(running=3))
        listed = await store.list("gpu")
    finally:
        await raw.aclose()
        await store.aclose()

    assert beat is not None
    assert [(r.spec.replica_id, r.load.running) for r in listed] == [("r1", 3)]


async def test_a_heartbeat_of_an_expired_replica_adds_nothing(redis_server: RedisServer) -> None:
    url = await flushed(redis_server)
    store = RedisReplicaStore.from_url(url)
    try:
        assert await store.heartbeat("gpu", "gone", pb.ReplicaLoad()) is None
        assert await store.list("gpu") == []
    finally:
        await store.aclose()


async def test_list_prunes_only_index_entries_whose_replica_is_gone(
    redis_server: RedisServer,
) -> None:
    url = await flushed(redis_server)
    store = RedisReplicaStore.from_url(url)
    raw = aioredis.Redis.from_url(url)
    try:
        await store.register(spec("live"), pb.ReplicaLoad(), lease_ms=30_000)
        await raw.sadd("imesh:pool:gpu:members", "expired")

        listed = await store.list("gpu")
        index = await raw.smembers("imesh:pool:gpu:members")
    finally:
        await raw.aclose()
        await store.aclose()

    assert [r.spec.replica_id for r in listed] == ["live"]
    assert index == {b"live"}
