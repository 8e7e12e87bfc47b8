"""The router's live view of one pool: it watches the pool service and keeps a
PoolReplica, with its transport, for each replica the pool lists."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable

import grpc

from adapters.backend import Backend
from imesh.v1 import pool_service_pb2 as pb
from imesh.v1 import pool_service_pb2_grpc
from vllm_pool.health import ReplicaHealth
from vllm_pool.replica import PoolReplica

log = logging.getLogger(__name__)

_MAX_BACKOFF = 30
BackendFactory = Callable[[pb.ReplicaSpec], Backend]
HealthFactory = Callable[[], ReplicaHealth]


class PoolView:
    """Lifecycle: `start()` on the event loop (the first call does it), `aclose()` at
    shutdown. Reconnects after any watch failure and keeps the last membership meanwhile
    (replicas that died in between fail their calls and get ejected). A replica that
    leaves the pool keeps its transport until its last call ends, so draining finishes
    in-flight streams."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        pool: str,
        token: str,
        build_backend: BackendFactory,
        build_health: HealthFactory,
        retry_s: float = 1.0,
    ) -> None:
        self._channel = channel
        self._stub = pool_service_pb2_grpc.PoolServiceStub(channel)
        self._pool = pool
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._build_backend = build_backend
        self._build_health = build_health
        self._retry_s = retry_s
        self._replicas: dict[str, PoolReplica] = {}
        self._retiring: set[PoolReplica] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()

    @property
    def pool(self) -> str:
        return self._pool

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def replicas(self) -> list[PoolReplica]:
        return list(self._replicas.values())

    def release(self, replica: PoolReplica) -> None:
        """A call to `replica` ended; closes the transport of a replica that left."""
        if replica.removed and replica.in_flight == 0 and replica in self._retiring:
            self._retiring.discard(replica)
            self._close_later(replica.backend)

    async def _watch(self) -> None:
        failures = 0
        while True:
            try:
                stream = self._stub.WatchReplicas(
                    pb.WatchReplicasRequest(pool=self._pool), metadata=self._metadata
                )
                async for snapshot in stream:
                    self.apply(snapshot.replicas)
                    failures = 0
            except grpc.aio.AioRpcError as err:
                level = (
                    logging.ERROR
                    if err.code() is grpc.StatusCode.UNAUTHENTICATED
                    else logging.WARNING
                )
                log.log(
                    level, "watching pool %s: %s %s", self._pool, err.code().name, err.details()
                )
            except Exception:  # anything else must not end the watch and freeze membership
                log.exception("watching pool %s", self._pool)
            failures += 1
            # Backoff with jitter: 1, 2, 4... times retry_s, up to 30 times.
            backoff = self._retry_s * min(2 ** (failures - 1), _MAX_BACKOFF)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))

    def apply(self, records: Iterable[pb.Replica]) -> None:
        """Takes one membership snapshot (public for tests that drive a view directly)."""
        seen: set[str] = set()
        for record in records:
            rid = record.spec.replica_id
            seen.add(rid)
            current = self._replicas.get(rid)
            if current is not None and _same_endpoint(current.record.spec, record.spec):
                current.record = record
                continue
            if current is not None:
                self._retire(current)
            self._replicas[rid] = PoolReplica(
                record, self._build_backend(record.spec), self._build_health()
            )
            log.info("pool %s: replica %s at %s joined", self._pool, rid, record.spec.address)
        for rid in [rid for rid in self._replicas if rid not in seen]:
            log.info("pool %s: replica %s left", self._pool, rid)
            self._retire(self._replicas.pop(rid))
        self.synced.set()

    def _retire(self, replica: PoolReplica) -> None:
        replica.removed = True
        if replica.in_flight:
            self._retiring.add(replica)
        else:
            self._close_later(replica.backend)

    def _close_later(self, backend: Backend) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(backend.aclose())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        backends = [r.backend for r in (*self._replicas.values(), *self._retiring)]
        self._replicas.clear()
        self._retiring.clear()
        await asyncio.gather(
            *(b.aclose() for b in backends), *self._closers, return_exceptions=True
        )
        await self._channel.close(None)


def _same_endpoint(a: pb.ReplicaSpec, b: pb.ReplicaSpec) -> bool:
    return a.address == b.address and a.transport == b.transport
