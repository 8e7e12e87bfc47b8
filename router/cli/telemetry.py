"""Telemetry of one service process: the Prometheus registry, its metrics port, and the
OpenTelemetry SDK set up from the standard OTEL_* variables (tracing is off by default).

This is the composition root's part of observability. Library code never imports the SDK:
it asks `opentelemetry.trace` for a tracer (a no-op until `start_telemetry` installs a
provider) and registers its metrics on the registry it is handed.

Switches, read once at start-up:
- IMESH_METRICS=0 turns metrics off (no registry, no sinks, no /metrics); default on.
- Tracing is on when OTEL_TRACES_EXPORTER names an exporter (otlp, console) or an OTLP
  endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), unless
  OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none. The SDK itself reads the rest
  (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*,
  OTEL_EXPORTER_OTLP_*); OTEL_PROPAGATORS defaults to W3C trace context.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, disable_created_metrics

from router.cli.grpc_metrics import GrpcServerMetrics
from router.cli.loop_lag import LoopLag
from router.cli.metrics_port import start_metrics_port

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from gateway.metrics import EdgeObservability

log = logging.getLogger(__name__)

_EXPORTERS = frozenset({"otlp", "console"})


@dataclass(frozen=True, slots=True)
class TelemetrySwitches:
    """What the environment asks for."""

    metrics: bool
    exporters: tuple[str, ...]  # empty: tracing off

    @property
    def tracing(self) -> bool:
        return bool(self.exporters)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TelemetrySwitches:
        """Raises ValueError naming the variable when a value is not understood."""
        metrics_value = env.get("IMESH_METRICS", "1").strip()
        if metrics_value not in ("0", "1"):
            raise ValueError(f"IMESH_METRICS must be 0 or 1, got {metrics_value!r}")
        return cls(metrics=metrics_value == "1", exporters=_exporters(env))


def _exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ("otlp",) if endpoint else ()
    names = tuple(n.strip() for n in named.split(",") if n.strip())
    if names == ("none",):
        return ()
    unknown = sorted(set(names) - _EXPORTERS)
    if unknown:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER: unsupported exporter {', '.join(unknown)} "
            f"(supported: {', '.join(sorted(_EXPORTERS))}, none)"
        )
    return names


@dataclass
class Telemetry:
    """Lifecycle: `start_telemetry` once per process before any gRPC server or channel is
    built (the gRPC instrumentation patches their constructors); `close()` at exit stops
    the metrics port and the loop-lag watch, and flushes the spans still buffered.
    `registry` is None when metrics are off."""

    registry: CollectorRegistry | None
    tracing: bool
    _provider: TracerProvider | None = None
    _servers: list[asyncio.Server] = field(default_factory=list)
    _loop_lag: LoopLag | None = None

    async def serve_metrics(self, listen: str) -> int:
        """Serve `GET /metrics` on `listen` ("host:port"; port 0 picks one) on the running
        loop (router.cli.metrics_port), and return the bound port (0 when metrics are off:
        nothing is served). From then on the loop's lag is measured too
        (`imesh_event_loop_lag_seconds`, router.cli.loop_lag)."""
        if self.registry is None:
            return 0
        server = await start_metrics_port(self.registry, listen)
        self._servers.append(server)
        if self._loop_lag is None:
            self._loop_lag = LoopLag(self.registry)
            self._loop_lag.start()
        return int(server.sockets[0].getsockname()[1])

    def edge(self) -> EdgeObservability:
        """What the REST edge of this process exposes: its figures on this registry (the
        internal metrics port) and, on its public `/metrics`, those alone. Once per app."""
        from gateway.metrics import EdgeObservability

        return EdgeObservability(self.registry, self._provider)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()
        if self._loop_lag is not None:
            await self._loop_lag.aclose()
        if self._provider is not None:
            self._provider.shutdown()  # flushes what the batch processor still holds
            self._provider = None


def start_telemetry(service: str, env: Mapping[str, str]) -> Telemetry:
    """Telemetry as `env` asks for it, for a process whose default service name is
    `service` (OTEL_SERVICE_NAME overrides it)."""
    switches = TelemetrySwitches.from_env(env)
    if switches.metrics:
        # Each counter's *_created twin doubles the series and says little: not exported.
        disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry() if switches.metrics else None
    if registry is not None:
        instrument_servers(GrpcServerMetrics(registry))
    provider = _start_tracing(service, switches.exporters, env) if switches.tracing else None
    return Telemetry(registry=registry, tracing=provider is not None, _provider=provider)


def start_telemetry_or_exit(service: str) -> Telemetry:
    """`start_telemetry` from this process's environment, for a CLI command: a variable
    it does not understand ends the process (exit 2) with a line naming it."""
    try:
        return start_telemetry(service, os.environ)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def serve_metrics_or_exit(telemetry: Telemetry, listen: str) -> None:
    """Serve /metrics on `listen` and say where; exits 2 when it cannot listen there."""
    if telemetry.registry is None:
        print(f"metrics are off (IMESH_METRICS=0): nothing served on {listen}", file=sys.stderr)
        return
    try:
        port = await telemetry.serve_metrics(listen)
    except (OSError, ValueError) as exc:
        print(f"error: metrics cannot listen on {listen}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    host = listen.rpartition(":")[0] or "127.0.0.1"
    print(f"metrics on http://{host}:{port}/metrics", flush=True)


def instrument_servers(interceptor: grpc.aio.ServerInterceptor[Any, Any]) -> None:
    """Every grpc.aio server built from now on gets `interceptor` first in its chain (so
    what it measures or traces covers the others, an authenticating one included). What
    the gRPC instrumentation does for its own interceptors, for ours."""
    original = grpc.aio.server

    @functools.wraps(original)
    def server(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        kwargs["interceptors"] = [interceptor, *(kwargs.get("interceptors") or ())]
        return original(*args, **kwargs)

    grpc.aio.server = server


def _start_tracing(
    service: str, exporters: tuple[str, ...], env: Mapping[str, str]
) -> TracerProvider:
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
        from opentelemetry.instrumentation.grpc.filters import health_check, negate
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:  # pragma: no cover - the tracing extra is a dev dependency
        raise RuntimeError(
            "tracing was asked for (OTEL_*) but the tracing extra is not installed: "
            "pip install 'inference-mesh[tracing]'"
        ) from exc

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in exporters:
        exporter: SpanExporter
        if name == "otlp":
            exporter = _otlp_exporter(env)
        else:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter = ConsoleSpanExporter()
        # Batched in a background thread: exporting never runs on the event loop.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    from router.cli.grpc_tracing import TracingServerInterceptor

    instrument_servers(TracingServerInterceptor(provider))
    # Probes would be most of the spans and say nothing about requests.
    client = GrpcAioInstrumentorClient(filter_=negate(health_check()))  # type: ignore[no-untyped-call]
    client.instrument(tracer_provider=provider)
    log.info("tracing on: exporting spans with %s", ", ".join(exporters))
    return provider


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    """OTLP over gRPC (the default) or over HTTP, as OTEL_EXPORTER_OTLP_PROTOCOL says."""
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    raise ValueError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol {protocol!r} (grpc, http/protobuf)"
    )
