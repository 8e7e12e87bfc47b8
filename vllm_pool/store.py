"""Where the pool's membership lives: the ReplicaStore seam and its in-memory form.

Leases are kept on the pool service's wall clock (unix milliseconds), the one clock that
several pool service instances sharing a Redis can agree on. A replica whose lease ran
out is gone: every read drops it, so no sweeper is needed.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable

from imesh.v1 import pool_service_pb2 as pb


def wall_ms() -> int:
    return int(time.time() * 1000)


class ReplicaStore(abc.ABC):
    """The pool's membership, with leases.

    Lifecycle: built once by the pool service (memory for `imesh up`, Redis when several
    pool service instances must agree and survive restarts), `aclose()`d at shutdown.
    Every method is a single atomic step against the store; reads never return a replica
    whose lease has expired.
    """

    @abc.abstractmethod
    async def register(
        self, spec: pb.ReplicaSpec, load: pb.ReplicaLoad, lease_ms: int
    ) -> pb.Replica:
        """Adds the replica as READY (replacing an earlier entry with the same id)."""

    @abc.abstractmethod
    async def heartbeat(
        self, pool: str, replica_id: str, load: pb.ReplicaLoad
    ) -> pb.Replica | None:
        """Renews the lease and stores the load; None when the replica is unknown or its
        lease had already expired (the agent must register again)."""

    @abc.abstractmethod
    async def drain(self, pool: str, replica_id: str) -> bool:
        """Marks the replica DRAINING; False when it is unknown."""

    @abc.abstractmethod
    async def deregister(self, pool: str, replica_id: str) -> bool:
        """Removes the replica; False when it was unknown."""

    @abc.abstractmethod
    async def list(self, pool: str = "") -> list[pb.Replica]:
        """Live replicas of one pool (every pool when empty), ordered by pool and id."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def expired(replica: pb.Replica, now_ms: int) -> bool:
    return now_ms - replica.renewed_at_ms > replica.lease_ms


class MemoryReplicaStore(ReplicaStore):
    """Membership in this process only (`imesh up` without Redis)."""

    def __init__(self, clock_ms: Callable[[], int] = wall_ms) -> None:
        self._clock_ms = clock_ms
        self._replicas: dict[tuple[str, str], pb.Replica] = {}

    async def register(
        self, spec: pb.ReplicaSpec, load: pb.ReplicaLoad, lease_ms: int
    ) -> pb.Replica:
        now = self._clock_ms()
        replica = pb.Replica(
            spec=spec,
            state=pb.REPLICA_STATE_READY,
            load=load,
            registered_at_ms=now,
            renewed_at_ms=now,
            lease_ms=lease_ms,
        )
        self._replicas[(spec.pool, spec.replica_id)] = replica
        return _copy(replica)

    async def heartbeat(
        self, pool: str, replica_id: str, load: pb.ReplicaLoad
    ) -> pb.Replica | None:
        replica = self._live(pool, replica_id)
        if replica is None:
            return None
        replica.load.CopyFrom(load)
        replica.renewed_at_ms = self._clock_ms()
        return _copy(replica)

    async def drain(self, pool: str, replica_id: str) -> bool:
        replica = self._live(pool, replica_id)
        if replica is None:
            return False
        replica.state = pb.REPLICA_STATE_DRAINING
        return True

    async def deregister(self, pool: str, replica_id: str) -> bool:
        return self._replicas.pop((pool, replica_id), None) is not None

    async def list(self, pool: str = "") -> list[pb.Replica]:
        now = self._clock_ms()
        for key, replica in list(self._replicas.items()):
            if expired(replica, now):
                del self._replicas[key]
        return [
            _copy(self._replicas[key])
            for key in sorted(self._replicas)
            if not pool or key[0] == pool
        ]

    def _live(self, pool: str, replica_id: str) -> pb.Replica | None:
        replica = self._replicas.get((pool, replica_id))
        if replica is not None and expired(replica, self._clock_ms()):
            del self._replicas[(pool, replica_id)]
            return None
        return replica


def _copy(replica: pb.Replica) -> pb.Replica:
    out = pb.Replica()
    out.CopyFrom(replica)
    return out
