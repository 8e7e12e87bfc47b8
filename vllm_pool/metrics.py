"""The GPU pool for Prometheus, as a router sees it (each replica's load as it last
reported it, this router's own calls in flight to it, its lease state and whether this
router has ejected it) and as a replica agent sees its own replica.

Read at scrape time from the pool views (nothing per request). Only replicas in the pool
now are reported, so a replaced pod's series end with it instead of lingering.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from imesh.v1 import pool_service_pb2 as pb
from vllm_pool.agent import ReplicaAgent
from vllm_pool.view import PoolView

_STATES = {pb.REPLICA_STATE_READY: "ready", pb.REPLICA_STATE_DRAINING: "draining"}
_LABELS = ("pool", "replica")


class PoolReplicaCollector(Collector):
    """Lifecycle: register once on the process's registry with the views of the pools the
    router's backends watch; `collect` runs on the event loop (the metrics port and the
    edge's /metrics are served there)."""

    def __init__(self, views: Sequence[PoolView]) -> None:
        self._views = tuple(views)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily(
            "imesh_pool_replica_running", "Requests the replica reported running.", labels=_LABELS
        )
        waiting = GaugeMetricFamily(
            "imesh_pool_replica_waiting",
            "Requests the replica reported waiting to be scheduled.",
            labels=_LABELS,
        )
        kv = GaugeMetricFamily(
            "imesh_pool_replica_kv_cache_usage",
            "KV-cache usage the replica reported, from 0 to 1.",
            labels=_LABELS,
        )
        in_flight = GaugeMetricFamily(
            "imesh_pool_replica_in_flight",
            "Calls this router has open to the replica now.",
            labels=_LABELS,
        )
        state = GaugeMetricFamily(
            "imesh_pool_replica_state",
            "1 for the replica's lease state (ready, draining), 0 for the other.",
            labels=(*_LABELS, "state"),
        )
        ejected = GaugeMetricFamily(
            "imesh_pool_replica_ejected",
            "1 while this router keeps the replica out after failures (passive ejection).",
            labels=_LABELS,
        )
        for view in self._views:
            for replica in view.replicas():
                labels = (view.pool, replica.id)
                load = replica.record.load
                running.add_metric(labels, load.running)
                waiting.add_metric(labels, load.waiting)
                kv.add_metric(labels, load.kv_cache_usage)
                in_flight.add_metric(labels, replica.in_flight)
                current = _STATES.get(replica.record.state)
                for name in _STATES.values():
                    state.add_metric((*labels, name), 1.0 if name == current else 0.0)
                ejected.add_metric(labels, 1.0 if replica.health.ejected else 0.0)
        yield from (running, waiting, kv, in_flight, state, ejected)


class AgentCollector(Collector):
    """A replica agent's view of its replica: registered or not, the load it reports,
    and how old that reading is (a stale one means the engine stopped answering)."""

    def __init__(self, agent: ReplicaAgent, pool: str) -> None:
        self._agent = agent
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        agent = self._agent
        labels = ("pool",)
        values = (self._pool,)
        registered = GaugeMetricFamily(
            "imesh_replica_agent_registered",
            "1 while the agent holds a lease in the pool for its replica.",
            labels=labels,
        )
        registered.add_metric(values, 1.0 if agent.registered.is_set() else 0.0)
        load = agent.load
        families = [registered]
        for name, doc, value in (
            ("running", "Requests the engine reported running.", load.running),
            ("waiting", "Requests the engine reported waiting.", load.waiting),
            ("kv_cache_usage", "KV-cache usage the engine reported (0 to 1).", load.kv_cache_usage),
        ):
            family = GaugeMetricFamily(f"imesh_replica_agent_{name}", doc, labels=labels)
            family.add_metric(values, value)
            families.append(family)
        age = GaugeMetricFamily(
            "imesh_replica_agent_load_age_seconds",
            "Seconds since the agent last read the engine's load.",
            labels=labels,
        )
        if math.isfinite(agent.load_age_s):
            age.add_metric(values, agent.load_age_s)
        families.append(age)
        yield from families
