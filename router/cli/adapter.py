"""`imesh adapter NAME`: serve one provider of the config as a standalone AdapterService."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from router.cli._common import describe, fail, load_config_or_exit, run, shown_address, stop_signal

if TYPE_CHECKING:
    from adapters.config import AdapterServiceSettings

EPILOG = """\
examples:
  imesh adapter openai-main --config mesh.yaml --listen 127.0.0.1:7001
  imesh adapter openai --config mesh.yaml --listen 10.0.0.7:50061 --health-listen 0.0.0.0:50062
the config's adapter_service section names the service tokens routers must present (and
TLS); the router reaches the adapter through a provider of kind "remote" with
address: HOST:PORT and the same token.
"""
# Seconds in-flight streams get to finish on SIGTERM before they are cancelled.
DRAIN_S = 10.0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "adapter",
        help="serve one provider as a gRPC AdapterService",
        description=describe(
            "Serve providers[NAME] from the config (any kind but remote) as a "
            "gRPC AdapterService with health and reflection. The in-process and served "
            "forms run the same adapter code."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", metavar="NAME", help="provider name under providers:")
    parser.add_argument("--config", metavar="FILE", required=True, help="mesh config (YAML)")
    parser.add_argument(
        "--listen", metavar="ADDR", required=True, help="gRPC address, e.g. 127.0.0.1:7001"
    )
    parser.add_argument(
        "--health-listen",
        metavar="ADDR",
        help="also serve grpc.health.v1 alone, in plaintext, here (for probes without TLS)",
    )
    parser.add_argument(
        "--metrics", metavar="ADDR", help="serve GET /metrics here (default: metrics.listen)"
    )
    parser.set_defaults(func=run_adapter)


def run_adapter(args: argparse.Namespace) -> int:
    from adapters.config import RemoteConfig

    config = load_config_or_exit(args.config)
    provider = config.providers.get(args.name)
    if provider is None:
        known = ", ".join(sorted(config.providers))
        fail(f"providers.{args.name}: no such provider in {args.config} (known: {known})", 2)
    if isinstance(provider, RemoteConfig):
        fail(f"providers.{args.name}: kind remote is served elsewhere; nothing to serve", 2)
    if config.adapter_service is None:
        fail(
            f"adapter_service: {args.config} names no service tokens; an adapter serves only "
            "routers that present one (adapter_service: {tokens: [env:NAME]})",
            2,
        )
    metrics = args.metrics or config.metrics.listen
    return run(_serve(args, provider, config.adapter_service, metrics))


async def _serve(
    args: argparse.Namespace,
    provider: object,
    settings: AdapterServiceSettings,
    metrics: str | None,
) -> int:
    from adapters.hop_auth import ServerSecurity
    from adapters.metrics import AdapterMetrics, MeteredBackend
    from adapters.registry import build_backend
    from adapters.service import start_adapter_server
    from router.cli.telemetry import serve_metrics_or_exit, start_telemetry_or_exit

    name, listen = args.name, args.listen
    stopped = stop_signal()
    # Before the server exists: it is instrumented as it is made.
    telemetry = start_telemetry_or_exit(f"imesh-adapter-{name}")
    try:
        security = ServerSecurity.for_adapter(settings)
    except KeyError as exc:  # a token or TLS file is missing: names it, never its value
        fail(f"adapter_service: {exc.args[0]}", 2)
    try:
        backend = build_backend(provider)  # type: ignore[arg-type]  # checked by run_adapter
    except KeyError as exc:  # a secret's variable is unset: names it, never its value
        fail(f"providers.{name}: {exc.args[0]}", 2)
    if telemetry.registry is not None:
        backend = MeteredBackend(backend, AdapterMetrics(telemetry.registry), provider=name)
    try:
        try:
            server = await start_adapter_server(
                backend, listen, security, health_listen=args.health_listen
            )
        except (OSError, RuntimeError) as exc:
            fail(f"error: adapter cannot listen on {listen}: {exc}")
        print(f"adapter {name} gRPC on {shown_address(listen, server.port)}", flush=True)
        if metrics:
            await serve_metrics_or_exit(telemetry, metrics)
        signal_name = await stopped
        print(f"{signal_name}: draining for up to {DRAIN_S:g}s", file=sys.stderr, flush=True)
        await server.stop(DRAIN_S)
    finally:
        await backend.aclose()
        await telemetry.close()
    return 0
