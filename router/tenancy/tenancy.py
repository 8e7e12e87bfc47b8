"""Tenancy for one router, assembled from the config: the authenticate and admit stages,
the usage RecordSink, the usage reader, key administration, and what runs beside them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from router.admission import Admitter
from router.config import MeshConfig
from router.recorder import RecordSink
from router.server import Service
from router.tenancy.admin_service import AdminServicer
from router.tenancy.admission import ReservationEstimator, TenantAdmitter, TenantAuthenticator
from router.tenancy.aggregator import UsageAggregator
from router.tenancy.authenticate import KeyAuthenticator
from router.tenancy.config import TenancySettings
from router.tenancy.fallback import FallbackLimiter
from router.tenancy.key_admin import KeyAdmin
from router.tenancy.keys import IssuedKey, KeyHasher
from router.tenancy.limits import RedisLimiter
from router.tenancy.local_limits import LocalLimiter
from router.tenancy.redis_util import connect
from router.tenancy.store import KeyStore
from router.tenancy.store_memory import MemoryKeyStore
from router.tenancy.store_redis import RedisKeyStore
from router.tenancy.usage_events import SpillSlot, StreamUsageSink, UsageSink
from router.tenancy.usage_recording import UsageRecorder
from router.tenancy.usage_service import TenantUsageAPI, UsageServicer
from router.tenancy.usage_store import MemoryUsage, RedisUsageReader, UsageReader

log = logging.getLogger(__name__)

# How long the aggregator's read waits for new events before it looks again.
AGGREGATOR_BLOCK_S = 1.0


@dataclass(eq=False)
class Tenancy:
    """Lifecycle: `build()` once at start (reads the secrets), `start()` (starts the usage
    flusher and aggregator, issues demo keys), hand the parts to the router and its
    services, `aclose()` at shutdown (a last usage flush; the Redis client closed)."""

    settings: TenancySettings
    authenticator: TenantAuthenticator
    admitter: TenantAdmitter
    recorder: UsageRecorder
    usage: UsageReader
    keys: KeyAdmin
    limiter: FallbackLimiter
    admin_key: str | None
    sink: UsageSink
    _redis: aioredis.Redis | None = None
    _aggregator: UsageAggregator | None = None
    _spill: SpillSlot | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def sinks(self) -> list[RecordSink]:
        return [self.recorder]

    @property
    def admitters(self) -> list[Admitter]:
        return [self.admitter]

    @property
    def usage_api(self) -> TenantUsageAPI:
        """imesh.api.UsageAPI in process (the REST edge's GET /v1/usage in `imesh up`)."""
        return TenantUsageAPI(
            self.authenticator,
            self.usage,
            tenants=self.settings.tenants,
            admin_key=self.admin_key,
        )

    @property
    def services(self) -> list[Service]:
        """The gRPC services to serve beside ChatService: usage, and admin with an admin key."""
        served: list[Service] = [UsageServicer(self.usage_api)]
        if self.admin_key is not None:
            served.append(AdminServicer(self.keys, self.admin_key))
        return served

    @property
    def shared(self) -> bool:
        """Keys, limits and usage live in Redis (shared by routers, durable)."""
        return self._redis is not None

    @classmethod
    def build(cls, settings: TenancySettings, config: MeshConfig) -> Tenancy:
        """Raises ValueError naming an unset secret variable (never its value) or a tenant's
        unknown model."""
        _check(settings, config)
        try:
            return cls._build(settings, config)
        except KeyError as exc:
            raise ValueError(f"tenancy: {exc.args[0]}") from None

    @classmethod
    def _build(cls, settings: TenancySettings, config: MeshConfig) -> Tenancy:
        redis_client = None
        spill = None
        store: KeyStore
        sink: UsageSink
        usage: UsageReader
        local = LocalLimiter()
        aggregator = None
        if settings.redis_url is not None:
            assert settings.key_secret is not None  # the config requires it with Redis
            secret = settings.key_secret.resolve().encode()
            redis_client = connect(settings.redis_url.resolve(), settings.redis_timeout_s)
            store = RedisKeyStore(redis_client)
            shared = RedisLimiter(redis_client, reservation_ttl_s=settings.reservation_ttl_s)
            limiter = FallbackLimiter(shared, local, carry=shared.carried)
            u = settings.usage
            if u.spill_dir is None:
                log.warning(
                    "tenancy.usage.spill_dir is not set: usage spilled during a Redis outage "
                    "goes to the temp directory and is lost with this machine"
                )
            spill_dir = Path(u.spill_dir or Path(tempfile.gettempdir()) / "imesh-usage")
            spill = SpillSlot.claim(spill_dir)
            sink = StreamUsageSink(
                redis_client,
                stream=u.stream,
                buffer_events=u.buffer_events,
                spill_path=spill.path,
                flush_interval_s=u.flush_interval_s,
            )
            usage = RedisUsageReader(redis_client, namespace=u.namespace)
            if u.aggregate:
                # Its own client: a blocking read outlasts the request path's fail-fast timeout.
                aggregator_client = connect(
                    settings.redis_url.resolve(), settings.redis_timeout_s + AGGREGATOR_BLOCK_S
                )
                aggregator = UsageAggregator(
                    aggregator_client,
                    namespace=u.namespace,
                    dedupe_ttl_s=u.dedupe_ttl_s,
                    block_s=AGGREGATOR_BLOCK_S,
                )
        else:
            # One process holds everything: a fresh secret per run is as good as any.
            secret = settings.key_secret.resolve().encode() if settings.key_secret else b""
            secret = secret or secrets.token_bytes(32)
            store = MemoryKeyStore()
            limiter = FallbackLimiter(local, local)  # never unreachable
            memory = MemoryUsage()
            sink, usage = memory, memory
        hasher = KeyHasher(secret)
        keys = KeyAuthenticator(hasher, store, settings.tenants, cache_s=settings.key_cache_s)
        return cls(
            settings=settings,
            authenticator=TenantAuthenticator(keys),
            admitter=TenantAdmitter(
                settings.tenants, limiter, ReservationEstimator(config), settings.overload
            ),
            recorder=UsageRecorder(sink),
            usage=usage,
            keys=KeyAdmin(hasher, store, settings.tenants, on_change=keys.invalidate),
            limiter=limiter,
            admin_key=settings.admin_key.resolve() if settings.admin_key else None,
            sink=sink,
            _redis=redis_client,
            _aggregator=aggregator,
            _spill=spill,
        )

    async def start(self) -> list[IssuedKey]:
        """Starts the background work; returns the demo keys issued (to print once)."""
        await self.sink.start()
        if self._aggregator is not None:
            self._tasks.append(asyncio.create_task(self._aggregator.run(), name="usage-agg"))
        return [
            await self.keys.create(name, "demo")
            for name, tenant in self.settings.tenants.items()
            if tenant.demo_key
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._aggregator is not None:
            await self._aggregator.aclose()
        await self.admitter.aclose()
        await self.limiter.aclose()
        await self.sink.aclose()
        if self._spill is not None:
            self._spill.release()
        if self._redis is not None:
            await self._redis.aclose()


def _check(settings: TenancySettings, config: MeshConfig) -> None:
    known = {d.name for d in config.deployments} | set(config.aliases)
    for name, tenant in settings.tenants.items():
        unknown = sorted(tenant.models - known - {"*"})
        if unknown:
            raise ValueError(f"tenancy.tenants.{name}.models: unknown {', '.join(unknown)}")
    if config.router.api_key_hashes:
        raise ValueError("router.api_key_hashes: tenancy's keys replace it; leave it empty")
