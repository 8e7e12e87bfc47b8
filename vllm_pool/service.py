"""PoolService over gRPC: the pool token, request checks, and watch streams over a
ReplicaStore.

Watchers of one pool share nothing but a wake-up signal: a write through this instance
wakes them at once, and each also re-reads the store every `poll_s`, which is how writes
made through another instance (same Redis) and lease expiries reach them. A watcher is
sent the membership only when it changed; heartbeats change it (load, renewal), so a
router sees each replica's load about as often as its agent reports it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from imesh.v1 import pool_service_pb2 as pb
from imesh.v1 import pool_service_pb2_grpc
from vllm_pool.store import ReplicaStore

log = logging.getLogger(__name__)

_Context = grpc.aio.ServicerContext[Any, Any]
_TRANSPORTS = (pb.REPLICA_TRANSPORT_HTTP, pb.REPLICA_TRANSPORT_GRPC)


class _Signal:
    """Wakes every waiter once per `fire()` (an Event replaced on each fire)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
        except TimeoutError:
            pass


class PoolServicer(pool_service_pb2_grpc.PoolServiceServicer):
    """Lifecycle: built with a store and the pool token; served until the server stops.
    The store is the caller's to close."""

    def __init__(
        self,
        store: ReplicaStore,
        *,
        token: str,
        lease_s: float = 5.0,
        heartbeat_s: float = 1.0,
        poll_s: float = 0.5,
    ) -> None:
        if not token:
            raise ValueError("the pool token must not be empty")
        if heartbeat_s * 2 > lease_s:
            raise ValueError("lease_s must allow at least two heartbeats")
        self._store = store
        self._expected = f"Bearer {token}".encode()
        self._lease_ms = int(lease_s * 1000)
        self._heartbeat_ms = int(heartbeat_s * 1000)
        self._poll_s = poll_s
        self._signals: dict[str, _Signal] = {}

    async def Register(self, request: pb.RegisterRequest, context: _Context) -> pb.RegisterResponse:
        await self._authorize(context, "Register")
        spec = request.spec
        problem = _invalid_spec(spec)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        await self._store.register(spec, request.load, self._lease_ms)
        log.info(
            "replica %s/%s registered at %s serving %s",
            spec.pool,
            spec.replica_id,
            spec.address,
            ",".join(spec.models),
        )
        self._changed(spec.pool)
        return pb.RegisterResponse(
            heartbeat_interval_ms=self._heartbeat_ms, lease_ms=self._lease_ms
        )

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: _Context
    ) -> pb.HeartbeatResponse:
        await self._authorize(context, "Heartbeat")
        replica = await self._store.heartbeat(request.pool, request.replica_id, request.load)
        if replica is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"replica {request.pool}/{request.replica_id} is not registered (lease expired?)",
            )
        self._changed(request.pool)
        return pb.HeartbeatResponse(state=replica.state)

    async def Drain(self, request: pb.DrainRequest, context: _Context) -> pb.DrainResponse:
        await self._authorize(context, "Drain")
        if not await self._store.drain(request.pool, request.replica_id):
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no replica {request.pool}/{request.replica_id}"
            )
        log.info("replica %s/%s draining", request.pool, request.replica_id)
        self._changed(request.pool)
        return pb.DrainResponse()

    async def Deregister(
        self, request: pb.DeregisterRequest, context: _Context
    ) -> pb.DeregisterResponse:
        await self._authorize(context, "Deregister")
        if await self._store.deregister(request.pool, request.replica_id):
            log.info("replica %s/%s deregistered", request.pool, request.replica_id)
            self._changed(request.pool)
        return pb.DeregisterResponse()

    async def ListReplicas(
        self, request: pb.ListReplicasRequest, context: _Context
    ) -> pb.ListReplicasResponse:
        await self._authorize(context, "ListReplicas")
        return pb.ListReplicasResponse(replicas=await self._store.list(request.pool))

    async def WatchReplicas(
        self, request: pb.WatchReplicasRequest, context: _Context
    ) -> AsyncIterator[pb.WatchReplicasResponse]:
        await self._authorize(context, "WatchReplicas")
        if not request.pool:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pool: required")
        signal = self._signals.setdefault(request.pool, _Signal())
        last: bytes | None = None
        while True:
            snapshot = pb.WatchReplicasResponse(replicas=await self._store.list(request.pool))
            wire = snapshot.SerializeToString(deterministic=True)
            if wire != last:
                last = wire
                yield snapshot
            await signal.wait(self._poll_s)

    def _changed(self, pool: str) -> None:
        signal = self._signals.get(pool)
        if signal is not None:
            signal.fire()

    async def _authorize(self, context: _Context, method: str) -> None:
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self._expected):
            return
        why = "missing" if not given else "wrong"
        log.warning("PoolService.%s refused: %s pool token from %s", method, why, context.peer())
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{why} pool token")


def _invalid_spec(spec: pb.ReplicaSpec) -> str:
    if not spec.pool:
        return "spec.pool: required"
    if not spec.replica_id:
        return "spec.replica_id: required"
    if not spec.address:
        return "spec.address: required"
    if spec.transport not in _TRANSPORTS:
        return "spec.transport: HTTP or GRPC"
    if not spec.models:
        return "spec.models: at least one served model"
    return ""
