"""PoolService over real gRPC, with membership in memory and in Redis: registration,
heartbeats, drain, leases, watch, and the pool token."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest

from imesh.v1 import pool_service_pb2 as pb
from imesh.v1 import pool_service_pb2_grpc
from tests.support.redis_server import RedisServer
from tests.vllm_pool.conftest import AUTH, READ, flushed, service_config, until
from vllm_pool.server import PoolServer, start_pool_server
from vllm_pool.store import MemoryReplicaStore

if TYPE_CHECKING:
    from imesh.v1.pool_service_pb2_grpc import PoolServiceAsyncStub as Stub


def stub_on(channel: grpc.aio.Channel) -> Stub:
    return pool_service_pb2_grpc.PoolServiceStub(channel)


def spec(rid: str = "r1", pool: str = "gpu") -> pb.ReplicaSpec:
    return pb.ReplicaSpec(
        pool=pool,
        replica_id=rid,
        transport=pb.REPLICA_TRANSPORT_HTTP,
        address=f"http://{rid}:8000",
        models=["tiny"],
        max_context_length=512,
        capabilities=["streaming"],
        labels={"zone": "a"},
    )


async def register(stub: Stub, rid: str = "r1", pool: str = "gpu") -> pb.RegisterResponse:
    return await stub.Register(
        pb.RegisterRequest(spec=spec(rid, pool), load=pb.ReplicaLoad(running=1)), metadata=AUTH
    )


async def listed(stub: Stub, pool: str = "gpu") -> list[pb.Replica]:
    return list(
        (await stub.ListReplicas(pb.ListReplicasRequest(pool=pool), metadata=AUTH)).replicas
    )


async def _empty(stub: Stub) -> bool:
    return not await listed(stub)


async def test_a_registered_replica_is_listed_ready_with_its_spec(pool_stub: Stub) -> None:
    await register(pool_stub)

    [replica] = await listed(pool_stub)

    assert (replica.spec, replica.state) == (spec(), pb.REPLICA_STATE_READY)


async def test_register_tells_the_agent_its_heartbeat_interval_and_lease(pool_stub: Stub) -> None:
    answer = await register(pool_stub)

    assert (answer.heartbeat_interval_ms, answer.lease_ms) == (200, 2000)


async def test_a_heartbeat_stores_the_reported_load(pool_stub: Stub) -> None:
    await register(pool_stub)
    load = pb.ReplicaLoad(running=3, waiting=2, kv_cache_usage=0.5, prefix_cache_hit_rate=0.25)

    await pool_stub.Heartbeat(
        pb.HeartbeatRequest(pool="gpu", replica_id="r1", load=load), metadata=AUTH
    )

    assert (await listed(pool_stub))[0].load == load


async def test_a_heartbeat_of_an_unknown_replica_is_not_found(pool_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pool_stub.Heartbeat(pb.HeartbeatRequest(pool="gpu", replica_id="x"), metadata=AUTH)

    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_drain_marks_the_replica_draining(pool_stub: Stub) -> None:
    await register(pool_stub)

    await pool_stub.Drain(pb.DrainRequest(pool="gpu", replica_id="r1"), metadata=AUTH)

    assert (await listed(pool_stub))[0].state == pb.REPLICA_STATE_DRAINING


async def test_a_draining_replica_stays_draining_through_heartbeats(pool_stub: Stub) -> None:
    await register(pool_stub)
    await pool_stub.Drain(pb.DrainRequest(pool="gpu", replica_id="r1"), metadata=AUTH)

    answer = await pool_stub.Heartbeat(
        pb.HeartbeatRequest(pool="gpu", replica_id="r1"), metadata=AUTH
    )

    assert answer.state == pb.REPLICA_STATE_DRAINING


async def test_deregister_removes_the_replica(pool_stub: Stub) -> None:
    await register(pool_stub)

    await pool_stub.Deregister(pb.DeregisterRequest(pool="gpu", replica_id="r1"), metadata=AUTH)

    assert await listed(pool_stub) == []


async def test_list_without_a_pool_lists_every_pool(pool_stub: Stub) -> None:
    await register(pool_stub, "r1", "gpu")
    await register(pool_stub, "r2", "cpu")

    replicas = await listed(pool_stub, "")

    assert {(r.spec.pool, r.spec.replica_id) for r in replicas} == {("gpu", "r1"), ("cpu", "r2")}


async def test_a_replica_whose_lease_expires_is_removed(pool_stub: Stub) -> None:
    await register(pool_stub)

    await until(lambda: _empty(pool_stub))  # lease 2 s, never renewed


async def test_after_its_lease_expired_a_heartbeat_is_not_found(pool_stub: Stub) -> None:
    await register(pool_stub)
    await until(lambda: _empty(pool_stub))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pool_stub.Heartbeat(pb.HeartbeatRequest(pool="gpu", replica_id="r1"), metadata=AUTH)

    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "metadata", [(), (("authorization", "Bearer wrong"),)], ids=["missing", "wrong"]
)
async def test_a_registration_without_the_pool_token_is_refused(
    pool_stub: Stub, metadata: tuple[tuple[str, str], ...], caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="vllm_pool.service"),
        pytest.raises(grpc.aio.AioRpcError) as caught,
    ):
        await pool_stub.Register(pb.RegisterRequest(spec=spec()), metadata=metadata)

    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "PoolService.Register refused" in caplog.text
    assert await listed(pool_stub) == []


async def test_the_log_of_a_refusal_never_holds_the_token_sent(
    pool_stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(grpc.aio.AioRpcError):
        await pool_stub.Register(
            pb.RegisterRequest(spec=spec()), metadata=(("authorization", "Bearer s3cr3t-guess"),)
        )

    assert "s3cr3t-guess" not in caplog.text


async def test_a_spec_without_models_is_invalid(pool_stub: Stub) -> None:
    bad = spec()
    del bad.models[:]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pool_stub.Register(pb.RegisterRequest(spec=bad), metadata=AUTH)

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_sends_the_membership_then_each_change(pool_stub: Stub) -> None:
    await register(pool_stub, "r1")
    stream = pool_stub.WatchReplicas(pb.WatchReplicasRequest(pool="gpu"), metadata=AUTH)
    first = await anext(aiter(stream))

    await register(pool_stub, "r2")
    second = await anext(aiter(stream))
    stream.cancel()

    assert [r.spec.replica_id for r in first.replicas] == ["r1"]
    assert [r.spec.replica_id for r in second.replicas] == ["r1", "r2"]


async def test_watch_pushes_heartbeat_load(pool_stub: Stub) -> None:
    await register(pool_stub)
    stream = pool_stub.WatchReplicas(pb.WatchReplicasRequest(pool="gpu"), metadata=AUTH)
    await anext(aiter(stream))

    await pool_stub.Heartbeat(
        pb.HeartbeatRequest(pool="gpu", replica_id="r1", load=pb.ReplicaLoad(waiting=7)),
        metadata=AUTH,
    )
    pushed = await anext(aiter(stream))
    stream.cancel()

    assert pushed.replicas[0].load.waiting == 7


async def test_watch_without_the_token_is_refused(pool_stub: Stub) -> None:
    stream = pool_stub.WatchReplicas(pb.WatchReplicasRequest(pool="gpu"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await anext(aiter(stream))

    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
async def two_instances_on_redis(
    redis_server: RedisServer, pool_token: str
) -> AsyncIterator[tuple[PoolServer, PoolServer]]:
    config = service_config(pool_token, redis_url=await flushed(redis_server))
    first, second = await start_pool_server(config), await start_pool_server(config)
    yield first, second
    await first.stop(0)
    await second.stop(0)


async def test_two_instances_sharing_redis_agree(
    two_instances_on_redis: tuple[PoolServer, PoolServer],
) -> None:
    first, second = two_instances_on_redis
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as a,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as b,
    ):
        await register(stub_on(a))
        watch = stub_on(b).WatchReplicas(pb.WatchReplicasRequest(pool="gpu"), metadata=AUTH)

        seen = await anext(aiter(watch))
        watch.cancel()

    assert [r.spec.replica_id for r in seen.replicas] == ["r1"]


async def test_membership_in_redis_survives_a_restart_of_the_service(
    redis_server: RedisServer, pool_token: str
) -> None:
    config = service_config(pool_token, redis_url=await flushed(redis_server), lease_s=30.0)
    before = await start_pool_server(config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{before.port}") as channel:
        await register(stub_on(channel), "survivor")
    await before.stop(0)

    after = await start_pool_server(config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{after.port}") as channel:
        replicas = await listed(stub_on(channel))
    await after.stop(0)

    assert [r.spec.replica_id for r in replicas] == ["survivor"]


async def test_a_reader_token_lists_and_watches_but_never_registers(
    pool_stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    await register(pool_stub)
    listing = await pool_stub.ListReplicas(pb.ListReplicasRequest(pool="gpu"), metadata=READ)
    watch = pool_stub.WatchReplicas(pb.WatchReplicasRequest(pool="gpu"), metadata=READ)
    seen = await anext(aiter(watch))
    watch.cancel()

    with (
        caplog.at_level(logging.WARNING, logger="vllm_pool.service"),
        pytest.raises(grpc.aio.AioRpcError) as caught,
    ):
        await pool_stub.Register(pb.RegisterRequest(spec=spec("rogue")), metadata=READ)

    assert [r.spec.replica_id for r in listing.replicas] == ["r1"]
    assert [r.spec.replica_id for r in seen.replicas] == ["r1"]
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "PoolService.Register refused" in caplog.text
    for write in (
        pool_stub.Heartbeat(pb.HeartbeatRequest(pool="gpu", replica_id="r1"), metadata=READ),
        pool_stub.Drain(pb.DrainRequest(pool="gpu", replica_id="r1"), metadata=READ),
        pool_stub.Deregister(pb.DeregisterRequest(pool="gpu", replica_id="r1"), metadata=READ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await write
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert [r.state for r in await listed(pool_stub)] == [pb.REPLICA_STATE_READY]


async def test_an_agent_token_that_is_also_a_reader_token_is_refused_at_start(
    pool_token: str,
) -> None:
    config = service_config(pool_token, reader_tokens=[pool_token])
    with pytest.raises(ValueError, match="agent token must not also be a reader token"):
        await start_pool_server(config)


class CountingStore(MemoryReplicaStore):
    """Counts full reads of the membership."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    async def list(self, pool: str = "") -> list[pb.Replica]:
        self.lists += 1
        return await super().list(pool)


async def test_watchers_of_a_pool_share_one_read_of_the_store_per_change(
    pool_token: str,
) -> None:
    store = CountingStore()
    # A long poll: only writes wake the feed during the test.
    server = await start_pool_server(service_config(pool_token, poll_s=60.0), store=store)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = stub_on(channel)
            await register(stub)
            watches = [
                stub.WatchReplicas(pb.WatchReplicasRequest(pool="gpu"), metadata=READ)
                for _ in range(8)
            ]
            for watch in watches:
                await anext(aiter(watch))
            before = store.lists
            for running in range(2, 12):
                await stub.Heartbeat(
                    pb.HeartbeatRequest(
                        pool="gpu", replica_id="r1", load=pb.ReplicaLoad(running=running)
                    ),
                    metadata=AUTH,
                )
            last = [await _until_running(watch, 11) for watch in watches]
            reads = store.lists - before
            for watch in watches:
                watch.cancel()
    finally:
        await server.stop(0)

    assert all(last)
    # 10 heartbeats: at most one read each (before: one per heartbeat per watcher, 80).
    assert reads <= 10


async def _until_running(
    watch: grpc.aio.UnaryStreamCall[pb.WatchReplicasRequest, pb.WatchReplicasResponse],
    running: int,
) -> bool:
    async for snapshot in watch:
        if snapshot.replicas and snapshot.replicas[0].load.running == running:
            return True
    return False
