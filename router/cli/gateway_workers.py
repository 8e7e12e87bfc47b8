"""`imesh gateway`'s processes: N uvicorn workers, each with one imesh.Client to the router.

The composition lives here, not in gateway/: the edge knows only ChatAPI and its settings,
while a worker also sets up telemetry and builds the gRPC client it calls through.
"""

from __future__ import annotations

import os

import uvicorn

from gateway.app import create_app
from gateway.dispatch import EdgeApp
from gateway.http_limits import bounded_protocol
from gateway.metrics import EdgeObservability
from gateway.server import GRACEFUL_S, PROXY_HEADERS
from gateway.settings import GatewaySettings, parse_listen

# How the parent hands its config to worker processes (which import the app factory).
ENV_ROUTER = "IMESH_GATEWAY_ROUTER"
ENV_SETTINGS = "IMESH_GATEWAY_SETTINGS"


def run_standalone(router_addr: str, listen: str, workers: int, settings: GatewaySettings) -> None:
    """N uvicorn workers on uvloop, each with one gRPC client to the router. Blocks until
    SIGINT/SIGTERM."""
    host, port = parse_listen(listen)
    os.environ[ENV_ROUTER] = router_addr
    os.environ[ENV_SETTINGS] = settings.model_dump_json()
    uvicorn.run(
        f"{__name__}:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=bounded_protocol(settings.max_header_bytes, settings.max_headers),
        ws="none",
        lifespan="on",
        proxy_headers=PROXY_HEADERS,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_S,
    )


def app_from_env() -> EdgeApp:
    """App factory run in each worker: one imesh.Client, closed at shutdown."""
    from opentelemetry import trace

    from imesh import Client
    from router.cli.telemetry import start_telemetry

    settings = GatewaySettings.model_validate_json(os.environ[ENV_SETTINGS])
    # Before the client's channel exists: tracing instruments channels as they are made.
    telemetry = start_telemetry("imesh-gateway", os.environ)
    observability = EdgeObservability(
        telemetry.registry, trace.get_tracer_provider() if telemetry.tracing else None
    )
    client = Client(os.environ[ENV_ROUTER])  # also the UsageAPI, over imesh.v1.UsageService
    return create_app(client, settings, owns_api=True, observability=observability, usage=client)
