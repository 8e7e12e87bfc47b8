"""`imesh gateway`: the OpenAI-compatible REST edge as its own service, calling a router."""

from __future__ import annotations

import argparse

from router.cli._common import add_router_address, describe, fail, load_config_or_exit

EPILOG = """\
examples:
  imesh gateway --router 127.0.0.1:50051 --listen 127.0.0.1:8080
  imesh gateway --router router.internal:50051 --listen 0.0.0.0:8080 --workers 4
  IMESH_ROUTER=127.0.0.1:50051 imesh gateway --config mesh.yaml
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "gateway",
        help="run the REST edge alone, calling a router over gRPC",
        description=describe(
            "Run the OpenAI-compatible REST/SSE edge as its own service; it calls "
            "the router's ChatService over gRPC (one channel per worker)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_router_address(parser)
    parser.add_argument(
        "--listen", metavar="ADDR", help="HTTP address (default: gateway.listen, 127.0.0.1:8080)"
    )
    parser.add_argument(
        "--workers", metavar="N", type=int, default=1, help="worker processes (default: 1)"
    )
    parser.add_argument(
        "--config", metavar="FILE", help="mesh config whose gateway: section to use"
    )
    parser.set_defaults(func=run_gateway)


def run_gateway(args: argparse.Namespace) -> int:
    from gateway.settings import GatewaySettings

    if args.workers < 1:
        fail("--workers must be at least 1", 2)
    settings = load_config_or_exit(args.config).gateway if args.config else GatewaySettings()
    from router.cli.gateway_workers import run_standalone

    try:
        run_standalone(args.router, args.listen or settings.listen, args.workers, settings)
    except ValueError as exc:  # a malformed --listen
        fail(f"error: {exc}", 2)
    return 0
