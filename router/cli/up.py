"""`imesh up` and `imesh router`: serve the router (and, for `up`, the REST edge) in one process."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from router.cli._common import (
    default_config_path,
    describe,
    fail,
    freeze_startup_heap,
    load_config_or_exit,
    run,
    shown_address,
    stop_signal,
    usable_listen,
)

if TYPE_CHECKING:
    from gateway.metrics import EdgeObservability
    from gateway.server import GatewayServer
    from imesh.api import ChatAPI, UsageAPI
    from router.config import MeshConfig
    from vllm_pool.server import PoolServer

UP_EPILOG = """\
examples:
  imesh up                                  # shipped simulated providers, gRPC :50051, HTTP :8080
  imesh up --config mesh.yaml
  imesh up --config mesh.yaml --listen 127.0.0.1:6000 --http 127.0.0.1:9000
  imesh up --no-http                        # router only, same as `imesh router`
"""

ROUTER_EPILOG = """\
examples:
  imesh router --config mesh.yaml
  imesh router --config mesh.yaml --listen 0.0.0.0:50051
providers of kind "remote" are reached over gRPC at adapters started with `imesh adapter`.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser(
        "up",
        help="run the whole mesh (router + REST edge) in one process",
        description=describe(
            "Run the whole mesh in one process: providers from the config, the "
            "router's gRPC ChatService and the OpenAI-compatible REST edge over the same "
            "router (no gRPC hop). SIGTERM or Ctrl-C drains in-flight streams, then exits."
        ),
        epilog=UP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="mesh config (YAML); default: the shipped simulated-provider config",
    )
    up.add_argument("--listen", metavar="ADDR", help="router gRPC address (default: router.listen)")
    up.add_argument("--http", metavar="ADDR", help="REST edge address (default: gateway.listen)")
    up.add_argument("--no-http", action="store_true", help="do not start the REST edge")
    up.add_argument(
        "--metrics", metavar="ADDR", help="serve GET /metrics here too (default: metrics.listen)"
    )
    up.set_defaults(func=run_up)

    router = commands.add_parser(
        "router",
        help="run the router alone (gRPC ChatService)",
        description=describe(
            "Run the router alone: the gRPC ChatService over the providers in "
            "the config. SIGTERM or Ctrl-C drains in-flight streams, then exits."
        ),
        epilog=ROUTER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    router.add_argument("--config", metavar="FILE", required=True, help="mesh config (YAML)")
    router.add_argument(
        "--listen", metavar="ADDR", help="gRPC address (default: router.listen in the config)"
    )
    router.add_argument(
        "--metrics", metavar="ADDR", help="serve GET /metrics here (default: metrics.listen)"
    )
    router.set_defaults(func=run_router)


def run_up(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config or default_config_path())
    listen = args.listen or config.router.listen
    http = None if args.no_http else (args.http or config.gateway.listen)
    return run(serve_mesh(config, listen, http, args.metrics or config.metrics.listen))


def run_router(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    listen = args.listen or config.router.listen
    return run(serve_mesh(config, listen, None, args.metrics or config.metrics.listen))


async def serve_mesh(
    config: MeshConfig, listen: str, http: str | None, metrics: str | None = None
) -> int:
    """Router on `listen`, plus the REST edge on `http` and `GET /metrics` on `metrics`
    when given, until SIGTERM/SIGINT. Telemetry follows IMESH_METRICS and OTEL_*."""
    from adapters.registry import build_backends
    from router.cli.observers import router_observers
    from router.cli.telemetry import serve_metrics_or_exit, start_telemetry_or_exit
    from router.cli.tenancy_setup import start_tenancy
    from router.server import start_router_server
    from router.service import ChatRouter
    from vllm_pool import register_kind

    register_kind()  # provider kind vllm_pool
    for what, address in (("router", listen), ("edge", http), ("metrics", metrics)):
        if address:
            usable_listen(what, address)
    stopped = stop_signal()
    # Before any channel or server exists: they are instrumented as they are made.
    telemetry = start_telemetry_or_exit("imesh-router")
    pool_server = await _start_pool_service(config)  # before the backends that watch it
    try:
        backends = build_backends(config.providers)
    except ValueError as exc:  # a secret's variable is unset: names it, never its value
        fail(str(exc), 2)
    observers = router_observers(config, telemetry, os.environ)
    tenancy = await start_tenancy(config)  # None without a `tenancy` section
    chat_router = ChatRouter(
        config,
        backends,
        sinks=[*observers.sinks, *(tenancy.sinks if tenancy else ())],
        tracer=observers.tracer,
        authenticator=tenancy.authenticator if tenancy else None,
        admitters=tenancy.admitters if tenancy else (),
    )
    observers.watch(chat_router, backends, tenancy)
    try:
        try:
            server = await start_router_server(
                chat_router,
                listen,
                max_request_bytes=config.router.max_request_bytes,
                tls=config.router.tls,
                services=tenancy.services if tenancy else (),
            )
        except KeyError as exc:  # a TLS file is missing or not PEM: names it
            fail(f"router.tls: {exc.args[0]}", 2)
        except (OSError, RuntimeError) as exc:
            fail(f"error: router cannot listen on {listen}: {exc}", 2)
        print(f"router gRPC on {shown_address(listen, server.port)}", flush=True)
        if metrics:
            await serve_metrics_or_exit(telemetry, metrics)
        try:
            usage = tenancy.usage_api if tenancy else None
            edge = (
                await _start_edge(chat_router, config, http, telemetry.edge(), usage)
                if http
                else None
            )
        except SystemExit:
            await server.stop(0)  # no gRPC server left for the interpreter's teardown
            raise
        freeze_startup_heap()
        signal_name = await stopped
        print(
            f"{signal_name}: draining for up to {config.router.drain_s:g}s",
            file=sys.stderr,
            flush=True,
        )
        await server.stop(config.router.drain_s)
        if edge is not None:
            await edge.stop()
    finally:
        await chat_router.aclose()
        if tenancy is not None:
            await tenancy.aclose()
        if pool_server is not None:
            await pool_server.stop()
        await telemetry.close()
    return 0


async def _start_pool_service(config: MeshConfig) -> PoolServer | None:
    """The GPU pool's registry in this process, when the config has `pool_service`."""
    if config.pool_service is None:
        return None
    from vllm_pool.server import start_pool_server

    try:
        server = await start_pool_server(config.pool_service)
    except KeyError as exc:  # a token or URL reference is unset: names it, never its value
        fail(f"pool_service: {exc.args[0]}", 2)
    except ValueError as exc:  # an agent token also listed as a reader token
        fail(f"pool_service: {exc}", 2)
    except OSError as exc:
        fail(f"error: pool service cannot listen on {config.pool_service.listen}: {exc}", 2)
    where = "Redis" if config.pool_service.redis_url else "memory"
    address = shown_address(config.pool_service.listen, server.port)
    print(f"pool service gRPC on {address} (membership in {where})", flush=True)
    return server


async def _start_edge(
    api: ChatAPI,
    config: MeshConfig,
    http: str,
    observability: EdgeObservability,
    usage: UsageAPI | None = None,
) -> GatewayServer | None:
    """The REST edge over the in-process router (no gRPC hop); None when not installed."""
    try:
        from gateway.server import start_gateway
    except ModuleNotFoundError as exc:
        if exc.name not in ("gateway.server", "gateway"):
            raise
        print("edge HTTP skipped: gateway.server is not available", file=sys.stderr)
        return None
    try:
        edge = await start_gateway(api, config.gateway, http, observability, usage)
    except (OSError, ValueError) as exc:
        fail(f"error: edge cannot listen on {http}: {exc}", 2)
    print(f"edge HTTP on http://{shown_address(http, edge.port)}", flush=True)
    return edge
