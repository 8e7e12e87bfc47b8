"""A replica as the router sees it: the pool's record of it, its transport, and what this
router alone knows (its own calls in flight, the replica's health)."""

from __future__ import annotations

from adapters.backend import Backend
from imesh.v1 import pool_service_pb2 as pb
from vllm_pool.health import ReplicaHealth

# Score weights, in "requests": a waiting request costs more than a running one (it has
# not even been scheduled), and a nearly full KV cache means new requests will queue.
WAITING_WEIGHT = 2.0
KV_WEIGHT = 8.0


class PoolReplica:
    """Mutable, owned by one PoolView; read and written on the event loop only. A
    `router.policies` Target, so the router's policies can rank replicas."""

    ttft_ewma: float | None = None  # the pool ranks on load, not latency
    weight = 1
    estimated_cost_micros = 0  # self-hosted: no per-token price

    def __init__(self, record: pb.Replica, backend: Backend, health: ReplicaHealth) -> None:
        self.record = record
        self.backend = backend
        self.health = health
        self.in_flight = 0
        self.calls = 0  # calls this router sent it (`imesh pool` and tests read it)
        self.removed = False  # left the pool; closed once its last call ends

    @property
    def id(self) -> str:
        return self.record.spec.replica_id

    @property
    def name(self) -> str:
        return self.record.spec.replica_id

    @property
    def ready(self) -> bool:
        return self.record.state == pb.REPLICA_STATE_READY and not self.removed

    def serves(self, model: str) -> bool:
        return model in self.record.spec.models

    @property
    def requests(self) -> int:
        """Requests on the replica: what it last reported plus this router's own calls
        (which covers the time between heartbeats; a call already counted in the report
        is counted twice until the next one, a bias every replica shares)."""
        load = self.record.load
        return load.running + load.waiting + self.in_flight

    @property
    def score(self) -> float:
        """Lower is better."""
        load = self.record.load
        return (
            load.running
            + WAITING_WEIGHT * load.waiting
            + KV_WEIGHT * load.kv_cache_usage
            + self.in_flight
        )

    def __repr__(self) -> str:
        return f"PoolReplica({self.id!r}, score={self.score:.2f})"
