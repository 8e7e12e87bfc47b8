"""Pool replica metrics: read from a pool view at scrape time; a replica that left the
pool leaves no series behind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from prometheus_client import CollectorRegistry

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from imesh.v1 import adapter_service_pb2
from imesh.v1 import pool_service_pb2 as pb
from vllm_pool.agent import AgentSettings, ReplicaAgent
from vllm_pool.engine_probe import HttpEngineProbe
from vllm_pool.health import ReplicaHealth
from vllm_pool.metrics import AgentCollector, PoolReplicaCollector
from vllm_pool.view import PoolView


class Idle(Backend):
    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        yield []


def replica(rid: str, state: int, running: int, waiting: int, kv: float) -> pb.Replica:
    return pb.Replica(
        spec=pb.ReplicaSpec(pool="gpu", replica_id=rid, address=f"{rid}:8000", models=["m"]),
        state=state,  # type: ignore[arg-type]
        load=pb.ReplicaLoad(running=running, waiting=waiting, kv_cache_usage=kv),
    )


async def test_replica_load_state_and_ejection_are_read_at_scrape_time() -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never called: the view is driven
    view = PoolView(
        channel,
        pool="gpu",
        token="t",
        build_backend=lambda spec: Idle(),
        build_health=lambda: ReplicaHealth(eject_after=1, eject_s=60, max_eject_s=60),
    )
    registry = CollectorRegistry()
    registry.register(PoolReplicaCollector([view]))
    view.apply(
        [
            replica("r1", pb.REPLICA_STATE_READY, 3, 1, 0.5),
            replica("r2", pb.REPLICA_STATE_DRAINING, 0, 0, 0.0),
        ]
    )
    (r1,) = [r for r in view.replicas() if r.id == "r1"]
    r1.in_flight = 2
    r1.health.failed()

    def get(name: str, rid: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"pool": "gpu", "replica": rid, **labels})

    assert get("imesh_pool_replica_running", "r1") == 3
    assert get("imesh_pool_replica_waiting", "r1") == 1
    assert get("imesh_pool_replica_kv_cache_usage", "r1") == 0.5
    assert get("imesh_pool_replica_in_flight", "r1") == 2
    assert get("imesh_pool_replica_ejected", "r1") == 1
    assert get("imesh_pool_replica_state", "r1", state="ready") == 1
    assert get("imesh_pool_replica_state", "r2", state="draining") == 1
    assert get("imesh_pool_replica_state", "r2", state="ready") == 0

    view.apply([replica("r1", pb.REPLICA_STATE_READY, 0, 0, 0.1)])
    assert get("imesh_pool_replica_running", "r2") is None
    await view.aclose()
    await channel.close(None)


async def test_an_agent_reports_its_lease_and_no_load_age_before_reading_any() -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never called
    probe = HttpEngineProbe("http://127.0.0.1:1")
    agent = ReplicaAgent(probe, channel, AgentSettings(pool="gpu", replica_id="r1", token="t"))
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent, "gpu"))
    assert registry.get_sample_value("imesh_replica_agent_registered", {"pool": "gpu"}) == 0
    assert (
        registry.get_sample_value("imesh_replica_agent_load_age_seconds", {"pool": "gpu"}) is None
    )
    agent.registered.set()
    assert registry.get_sample_value("imesh_replica_agent_registered", {"pool": "gpu"}) == 1
    assert registry.get_sample_value("imesh_replica_agent_waiting", {"pool": "gpu"}) == 0
    await probe.aclose()
    await channel.close(None)
