"""The replica agent: beside one vLLM server, it registers the replica with the pool,
heartbeats its load, and drains it on shutdown.

A heartbeat carries a load read within the last `stale_load_s`: a saturated vLLM answers
its metrics late and keeps its lease on its last reading, while one that stops answering
stops renewing and leaves the pool within `stale_load_s` plus one lease. The pool's
active health check is the heartbeat itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from imesh.v1 import pool_service_pb2 as pb
from imesh.v1 import pool_service_pb2_grpc
from vllm_pool.engine_probe import EngineProbe

log = logging.getLogger(__name__)


class AgentError(RuntimeError):
    """The agent cannot go on (vLLM never became healthy, the pool refused its token)."""


@dataclass(frozen=True, slots=True)
class AgentSettings:
    pool: str
    replica_id: str
    token: str
    labels: dict[str, str] = field(default_factory=dict)
    # The address routers use for the replica; default: the one the agent probes.
    advertise: str | None = None
    startup_timeout_s: float = 600.0
    drain_timeout_s: float = 120.0
    # Used until the pool answers Register with its own interval.
    heartbeat_s: float = 1.0
    retry_s: float = 1.0
    # How long the last load reading stands in for one the engine did not answer in time.
    stale_load_s: float = 3.0
    # A file whose appearance drains the replica as SIGTERM does: the vLLM container's
    # preStop hook creates it in a volume both containers mount (a native sidecar is
    # stopped only after the main container, too late to deregister first).
    drain_file: Path | None = None


class ReplicaAgent:
    """Lifecycle: `run(stop)` waits for vLLM, registers, heartbeats until `stop` is set,
    then drains (deregisters first, waits for in-flight requests, returns). The probe
    and channel belong to the caller."""

    def __init__(self, probe: EngineProbe, pool: grpc.aio.Channel, settings: AgentSettings) -> None:
        self._probe = probe
        self._pool = pool_service_pb2_grpc.PoolServiceStub(pool)
        self._settings = settings
        self._metadata = (("authorization", f"Bearer {settings.token}"),)
        self._interval = settings.heartbeat_s
        self._load = pb.ReplicaLoad()
        self._load_read_at = -math.inf
        self.registered = asyncio.Event()

    @property
    def load(self) -> pb.ReplicaLoad:
        """The load read last from the engine (what the next heartbeat reports)."""
        return self._load

    @property
    def load_age_s(self) -> float:
        """Seconds since the load was read (inf before the first read)."""
        return time.monotonic() - self._load_read_at

    async def run(self, stop: asyncio.Event) -> None:
        await self._wait_healthy(stop)
        if stop.is_set():
            return
        spec = await self._spec()
        await self._register(spec, stop)
        while not stop.is_set():
            if await _wait(stop, self._interval) or self._drain_requested():
                break
            await self._beat(spec, stop)
        await self._drain()

    def _drain_requested(self) -> bool:
        drain_file = self._settings.drain_file
        return drain_file is not None and drain_file.exists()

    async def _wait_healthy(self, stop: asyncio.Event) -> None:
        give_up = time.monotonic() + self._settings.startup_timeout_s
        while not await self._probe.healthy():
            if time.monotonic() > give_up:
                raise AgentError(
                    f"vLLM at {self._probe.address} not healthy after "
                    f"{self._settings.startup_timeout_s:.0f}s"
                )
            if await _wait(stop, self._settings.retry_s):
                return
        log.info("vLLM at %s is healthy", self._probe.address)

    async def _spec(self) -> pb.ReplicaSpec:
        info = await self._probe.info()
        return pb.ReplicaSpec(
            pool=self._settings.pool,
            replica_id=self._settings.replica_id,
            transport=self._probe.transport,
            address=self._settings.advertise or self._probe.address,
            models=info.models,
            max_context_length=info.max_context_length,
            capabilities=info.capabilities,
            labels=self._settings.labels,
        )

    async def _register(self, spec: pb.ReplicaSpec, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                load = await self._probe.load()
                self._load, self._load_read_at = load, time.monotonic()
                answer = await self._pool.Register(
                    pb.RegisterRequest(spec=spec, load=load), metadata=self._metadata
                )
            except grpc.RpcError as err:
                self._refused(err)
                log.warning("registering %s failed: %s; retrying", spec.replica_id, _why(err))
            except Exception as exc:  # the engine's load could not be read
                log.warning("reading %s's load failed: %s; retrying", spec.replica_id, exc)
            else:
                self._interval = answer.heartbeat_interval_ms / 1000 or self._interval
                log.info(
                    "replica %s registered with pool %s (%s, lease %.1fs)",
                    spec.replica_id,
                    spec.pool,
                    ",".join(spec.models),
                    answer.lease_ms / 1000,
                )
                self.registered.set()
                return
            if await _wait(stop, self._settings.retry_s):
                return

    async def _read_load(self) -> pb.ReplicaLoad | None:
        """A fresh reading, else the last one while it is not stale, else None."""
        try:
            self._load = await self._probe.load()
        except Exception as exc:
            if time.monotonic() - self._load_read_at > self._settings.stale_load_s:
                log.warning("reading %s's load failed: %s", self._settings.replica_id, exc)
                return None
            return self._load
        self._load_read_at = time.monotonic()
        return self._load

    async def _beat(self, spec: pb.ReplicaSpec, stop: asyncio.Event) -> None:
        load = await self._read_load()
        if load is None:
            return  # no heartbeat without a load: a dead engine lets its lease run out
        try:
            await self._pool.Heartbeat(
                pb.HeartbeatRequest(pool=spec.pool, replica_id=spec.replica_id, load=load),
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            self._refused(err)
            if _code(err) is grpc.StatusCode.NOT_FOUND:
                log.warning("replica %s's lease had expired; registering again", spec.replica_id)
                self.registered.clear()
                await self._register(spec, stop)
            else:
                log.warning("heartbeat of %s failed: %s", spec.replica_id, _why(err))

    async def _drain(self) -> None:
        s = self._settings
        try:
            await self._pool.Deregister(
                pb.DeregisterRequest(pool=s.pool, replica_id=s.replica_id),
                metadata=self._metadata,
                timeout=5,
            )
            log.info("replica %s deregistered; waiting for in-flight requests", s.replica_id)
        except grpc.RpcError as err:
            # The lease ends it anyway; in-flight requests still get their time.
            log.warning("deregistering %s failed: %s", s.replica_id, _why(err))
        give_up = time.monotonic() + s.drain_timeout_s
        while time.monotonic() < give_up:
            try:
                load = await self._probe.load()
            except Exception:
                break  # the engine is gone: nothing left to wait for
            if load.running + load.waiting == 0:
                break
            await asyncio.sleep(min(0.2, s.retry_s))
        log.info("replica %s drained", s.replica_id)

    def _refused(self, err: grpc.RpcError) -> None:
        if _code(err) is grpc.StatusCode.UNAUTHENTICATED:
            raise AgentError(f"the pool refused the agent's token: {_why(err)}") from None


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleeps up to `seconds`; True when `stop` was set."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    return err.code() if isinstance(err, grpc.aio.AioRpcError) else None


def _why(err: grpc.RpcError) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return str(err)
