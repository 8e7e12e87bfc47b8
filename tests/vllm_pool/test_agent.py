"""The replica agent against a fake vLLM server and a real pool service: registration,
heartbeats with load, drain on stop, token refusal, re-registration."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from imesh.v1 import pool_service_pb2 as pb
from imesh.v1 import pool_service_pb2_grpc
from tests.vllm_pool.conftest import AUTH, TOKEN, until
from tests.vllm_pool.fake_vllm import FakeVllm, FakeVllmState, fake_vllm
from vllm_pool.agent import AgentError, AgentSettings, ReplicaAgent
from vllm_pool.engine_probe import HttpEngineProbe
from vllm_pool.server import PoolServer

if TYPE_CHECKING:
    from imesh.v1.pool_service_pb2_grpc import PoolServiceAsyncStub


@pytest.fixture
async def vllm() -> AsyncIterator[FakeVllm]:
    async with fake_vllm(FakeVllmState(model="tiny", max_model_len=4096)) as server:
        yield server


@pytest.fixture
async def channel(pool_server: PoolServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{pool_server.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> PoolServiceAsyncStub:
    return pool_service_pb2_grpc.PoolServiceStub(channel)


LABELS = {"zone": "a", "gpu": "h100"}


def settings(token: str = TOKEN) -> AgentSettings:
    return AgentSettings(
        pool="gpu",
        replica_id="vllm-0",
        token=token,
        labels=LABELS,
        drain_timeout_s=10,
        retry_s=0.05,
    )


class Running:
    """An agent running in a task until stopped."""

    def __init__(self, agent: ReplicaAgent) -> None:
        self.agent = agent
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(agent.run(self.stop))

    async def registered(self) -> None:
        async with asyncio.timeout(10):
            await self.agent.registered.wait()

    async def finish(self) -> None:
        self.stop.set()
        async with asyncio.timeout(15):
            await self.task


@pytest.fixture
async def agent(vllm: FakeVllm, channel: grpc.aio.Channel) -> AsyncIterator[Running]:
    probe = HttpEngineProbe(vllm.url)
    running = Running(ReplicaAgent(probe, channel, settings()))
    await running.registered()
    yield running
    if not running.task.done():
        await running.finish()
    await probe.aclose()


async def replicas(stub: PoolServiceAsyncStub) -> list[pb.Replica]:
    answer = await stub.ListReplicas(pb.ListReplicasRequest(pool="gpu"), metadata=AUTH)
    return list(answer.replicas)


async def test_the_agent_registers_what_vllm_serves(
    agent: Running, vllm: FakeVllm, stub: PoolServiceAsyncStub
) -> None:
    [replica] = await replicas(stub)

    assert (
        replica.spec.replica_id,
        list(replica.spec.models),
        replica.spec.max_context_length,
        replica.spec.transport,
        replica.spec.address,
        dict(replica.spec.labels),
    ) == (
        "vllm-0",
        ["tiny"],
        4096,
        pb.REPLICA_TRANSPORT_HTTP,
        vllm.url,
        {"zone": "a", "gpu": "h100"},
    )


async def test_heartbeats_carry_the_load_from_vllm_metrics(
    agent: Running, vllm: FakeVllm, stub: PoolServiceAsyncStub
) -> None:
    vllm.state.running, vllm.state.waiting, vllm.state.kv = 3, 2, 0.5

    async def reported() -> bool:
        load = (await replicas(stub))[0].load
        return (load.running, load.waiting, load.kv_cache_usage) == (3, 2, 0.5)

    await until(reported)


async def test_the_agent_waits_for_vllm_to_be_healthy(
    vllm: FakeVllm, channel: grpc.aio.Channel, stub: PoolServiceAsyncStub
) -> None:
    vllm.state.healthy = False
    probe = HttpEngineProbe(vllm.url)
    running = Running(ReplicaAgent(probe, channel, settings()))
    await asyncio.sleep(0.3)
    assert await replicas(stub) == []

    vllm.state.healthy = True
    await running.registered()
    await running.finish()
    await probe.aclose()


async def test_on_stop_the_agent_deregisters_first_then_waits_for_in_flight_requests(
    agent: Running, vllm: FakeVllm, stub: PoolServiceAsyncStub
) -> None:
    vllm.state.running = 1
    agent.stop.set()

    await until(lambda: _gone(stub))
    await asyncio.sleep(0.2)
    assert not agent.task.done()  # still waiting for the running request

    vllm.state.running = 0
    async with asyncio.timeout(10):
        await agent.task


async def _gone(stub: PoolServiceAsyncStub) -> bool:
    return not await replicas(stub)


async def test_a_wrong_token_stops_the_agent_with_an_error(
    vllm: FakeVllm, channel: grpc.aio.Channel, stub: PoolServiceAsyncStub
) -> None:
    probe = HttpEngineProbe(vllm.url)

    with pytest.raises(AgentError, match="refused the agent's token"):
        async with asyncio.timeout(10):
            await ReplicaAgent(probe, channel, settings("not-the-token")).run(asyncio.Event())

    await probe.aclose()
    assert await replicas(stub) == []


async def test_the_agent_registers_again_when_the_pool_forgot_it(
    agent: Running, stub: PoolServiceAsyncStub
) -> None:
    await stub.Deregister(pb.DeregisterRequest(pool="gpu", replica_id="vllm-0"), metadata=AUTH)

    async def back() -> bool:
        return len(await replicas(stub)) == 1

    await until(back)


async def test_without_a_load_reading_the_lease_runs_out(
    agent: Running, vllm: FakeVllm, stub: PoolServiceAsyncStub
) -> None:
    vllm.state.metrics_fail = True  # the engine stopped answering

    await until(lambda: _gone(stub))


async def test_the_drain_file_drains_the_replica_like_sigterm(
    vllm: FakeVllm, channel: grpc.aio.Channel, stub: PoolServiceAsyncStub, tmp_path: Path
) -> None:
    drain_file = tmp_path / "drain"
    probe = HttpEngineProbe(vllm.url)
    running = Running(
        ReplicaAgent(probe, channel, dataclasses.replace(settings(), drain_file=drain_file))
    )
    await running.registered()

    drain_file.touch()  # what the vLLM container's preStop hook does

    await until(lambda: _gone(stub))
    async with asyncio.timeout(10):
        await running.task  # nothing in flight: the agent exits
    await probe.aclose()
