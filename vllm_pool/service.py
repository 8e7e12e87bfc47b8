"""PoolService over gRPC: the agent and reader tokens, request checks, and watch streams
over a ReplicaStore.

Watchers of one pool share one feed: a single task per pool (in this instance) reads the
store when a write through this instance wakes it and every `poll_s` otherwise (how
writes made through another instance, same Redis, and lease expiries arrive), and
publishes the membership when it changed. So the store is read once per change however
many routers watch. Heartbeats change the membership (load, renewal), so a router sees
each replica's load about as often as its agent reports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from adapters.hop_auth import TokenChecker
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

    async def wait(self, seconds: float | None = None) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
        except TimeoutError:
            pass


class _Feed:
    """One pool's membership for every watcher of it in this instance.

    Lifecycle: made by the first watcher, which starts its reader task; `watchers`
    counts them and the last to leave stops it (`stop()`). The task reads the store on
    `wake()` and every `poll_s`, and publishes a snapshot only when it changed.
    """

    def __init__(self, store: ReplicaStore, pool: str, poll_s: float) -> None:
        self._store = store
        self._pool = pool
        self._poll_s = poll_s
        self._wake = _Signal()
        self._published = _Signal()
        self._snapshot: pb.WatchReplicasResponse | None = None
        self._version = 0
        self.watchers = 0
        self._task = asyncio.get_running_loop().create_task(self._read())

    def wake(self) -> None:
        self._wake.fire()

    async def snapshots(self) -> AsyncIterator[pb.WatchReplicasResponse]:
        """Every published snapshot from the latest on (a slow watcher skips to the
        newest: membership is state, not a log)."""
        seen = 0
        while True:
            if self._version != seen and self._snapshot is not None:
                seen = self._version
                yield self._snapshot
            await self._published.wait()

    async def _read(self) -> None:
        last: bytes | None = None
        while True:
            try:
                snapshot = pb.WatchReplicasResponse(replicas=await self._store.list(self._pool))
            except Exception:  # the store is down: watchers keep the last membership
                log.warning("reading pool %s for its watchers", self._pool, exc_info=True)
            else:
                wire = snapshot.SerializeToString(deterministic=True)
                if wire != last:
                    last = wire
                    self._snapshot = snapshot
                    self._version += 1
                    self._published.fire()
            await self._wake.wait(self._poll_s)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class PoolServicer(pool_service_pb2_grpc.PoolServiceServicer):
    """Lifecycle: built with a store and the two token checkers; served until the server
    stops, then `aclose()` stops the watch feeds. The store is the caller's to close.

    Agents' calls (Register, Heartbeat, Drain, Deregister) need a token `agents` accepts;
    readers' (ListReplicas, WatchReplicas) one `readers` accepts (the server's reader
    tokens and its agent tokens: an agent token may read, a reader token never writes).
    """

    def __init__(
        self,
        store: ReplicaStore,
        *,
        agents: TokenChecker,
        readers: TokenChecker,
        lease_s: float = 5.0,
        heartbeat_s: float = 1.0,
        poll_s: float = 0.5,
    ) -> None:
        if heartbeat_s * 2 > lease_s:
            raise ValueError("lease_s must allow at least two heartbeats")
        self._store = store
        self._agents = agents
        self._readers = readers
        self._lease_ms = int(lease_s * 1000)
        self._heartbeat_ms = int(heartbeat_s * 1000)
        self._poll_s = poll_s
        self._feeds: dict[str, _Feed] = {}

    async def Register(self, request: pb.RegisterRequest, context: _Context) -> pb.RegisterResponse:
        await self._authorize(context, "Register", self._agents)
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
        await self._authorize(context, "Heartbeat", self._agents)
        replica = await self._store.heartbeat(request.pool, request.replica_id, request.load)
        if replica is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"replica {request.pool}/{request.replica_id} is not registered (lease expired?)",
            )
        self._changed(request.pool)
        return pb.HeartbeatResponse(state=replica.state)

    async def Drain(self, request: pb.DrainRequest, context: _Context) -> pb.DrainResponse:
        await self._authorize(context, "Drain", self._agents)
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
        await self._authorize(context, "Deregister", self._agents)
        if await self._store.deregister(request.pool, request.replica_id):
            log.info("replica %s/%s deregistered", request.pool, request.replica_id)
            self._changed(request.pool)
        return pb.DeregisterResponse()

    async def ListReplicas(
        self, request: pb.ListReplicasRequest, context: _Context
    ) -> pb.ListReplicasResponse:
        await self._authorize(context, "ListReplicas", self._readers)
        return pb.ListReplicasResponse(replicas=await self._store.list(request.pool))

    async def WatchReplicas(
        self, request: pb.WatchReplicasRequest, context: _Context
    ) -> AsyncIterator[pb.WatchReplicasResponse]:
        await self._authorize(context, "WatchReplicas", self._readers)
        if not request.pool:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pool: required")
        feed = self._feeds.get(request.pool)
        if feed is None:
            feed = self._feeds[request.pool] = _Feed(self._store, request.pool, self._poll_s)
        feed.watchers += 1
        try:
            async for snapshot in feed.snapshots():
                yield snapshot
        finally:
            feed.watchers -= 1
            if feed.watchers == 0 and self._feeds.get(request.pool) is feed:
                del self._feeds[request.pool]
                await feed.stop()

    def _changed(self, pool: str) -> None:
        feed = self._feeds.get(pool)
        if feed is not None:
            feed.wake()

    async def aclose(self) -> None:
        feeds = list(self._feeds.values())
        self._feeds.clear()
        await asyncio.gather(*(feed.stop() for feed in feeds), return_exceptions=True)

    async def _authorize(self, context: _Context, method: str, checker: TokenChecker) -> None:
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, token = given.partition(" ") if isinstance(given, str) else ("", "", "")
        if scheme == "Bearer" and checker.accepts(token):
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
