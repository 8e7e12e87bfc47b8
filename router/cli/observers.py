"""What watches a router, built by the composition root: its record sinks (metrics, the
request log), its tracer, and the scrape-time views of its live state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.backend import Backend
    from router.cli.telemetry import Telemetry
    from router.config import MeshConfig
    from router.metrics import RouterMetrics
    from router.recorder import RecordSink
    from router.service import ChatRouter
    from router.tenancy.tenancy import Tenancy
    from router.tracing import RouterTracer


@dataclass(frozen=True, slots=True)
class RouterObservers:
    """What watches a router: its record sinks (metrics, the request log) and its tracer."""

    sinks: tuple[RecordSink, ...]
    tracer: RouterTracer | None
    metrics: RouterMetrics | None

    def watch(
        self, router: ChatRouter, backends: Mapping[str, Backend], tenancy: Tenancy | None
    ) -> None:
        """Expose the router's live state at scrape time: breakers, attempts in flight,
        tenancy's Redis and limits, and the replicas of the GPU pools its backends watch."""
        if self.metrics is None:
            return
        limiter = router.limiter
        self.metrics.watch(router.breakers, router.stats, lambda: limiter.in_flight)
        if tenancy is not None:
            self.metrics.watch_tenancy(tenancy.limiter, tenancy.admitter)
        from vllm_pool.backend import PoolBackend
        from vllm_pool.metrics import PoolReplicaCollector

        views = [b.view for b in backends.values() if isinstance(b, PoolBackend)]
        if views:
            self.metrics.registry.register(PoolReplicaCollector(views))


def router_observers(
    config: MeshConfig, telemetry: Telemetry, env: Mapping[str, str]
) -> RouterObservers:
    """Sinks and tracer for a router built from `config`. IMESH_LOG_CONTENT=1 lets the
    request log carry error messages (they may quote a prompt): for debugging only."""
    from router.metrics import RouterMetrics
    from router.request_log import RequestLog
    from router.tracing import RouterTracer

    metrics = None
    if telemetry.registry is not None:
        metrics = RouterMetrics(
            telemetry.registry,
            models=config.aliases,
            deployments=[d.name for d in config.deployments],
            tenant_label=config.metrics.tenant_label,
        )
    request_log = RequestLog(content=env.get("IMESH_LOG_CONTENT") == "1")
    sinks: tuple[RecordSink, ...] = (request_log,) if metrics is None else (metrics, request_log)
    return RouterObservers(sinks, RouterTracer() if telemetry.tracing else None, metrics)
