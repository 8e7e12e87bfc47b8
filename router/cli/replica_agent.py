"""`imesh replica-agent`: beside one vLLM server, register it with the GPU pool,
heartbeat its load, drain it on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from router.cli._common import describe, fail, run, stop_signal
from router.cli.pool import (
    DEFAULT_POOL_SERVICE,
    client_tls_arguments,
    pool_channel,
    resolve_token,
)

if TYPE_CHECKING:
    from vllm_pool.agent import AgentSettings

EPILOG = """\
examples:
  imesh replica-agent --vllm http://127.0.0.1:8000 --pool-name gpu-a --labels zone=a,gpu=h100
  imesh replica-agent --vllm-grpc 127.0.0.1:50052 --pool 10.0.0.9:50061 --pool-name gpu-a
SIGTERM drains: the replica is deregistered first, in-flight requests finish, then the
agent exits. Run it as a native sidecar of the vLLM pod (deploy/pool).
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "replica-agent",
        help="register a vLLM server with the GPU pool and report its load",
        description=describe(
            "Wait until the vLLM server is healthy, read its served models and context "
            "length, register it with the pool under a lease, and heartbeat its load "
            "(running and waiting requests, KV-cache usage, prefix-cache hit rate) every "
            "second from its /metrics or gRPC GetLoads. SIGTERM drains it."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    engine = parser.add_mutually_exclusive_group(required=True)
    engine.add_argument("--vllm", metavar="URL", help="vLLM's OpenAI HTTP server")
    engine.add_argument("--vllm-grpc", metavar="ADDR", help="vLLM's native gRPC engine server")
    parser.add_argument(
        "--pool",
        metavar="ADDR",
        default=DEFAULT_POOL_SERVICE,
        help=f"pool service address (default {DEFAULT_POOL_SERVICE})",
    )
    parser.add_argument("--pool-name", default="default", help="the pool to join")
    parser.add_argument(
        "--replica-id", default=socket.gethostname(), help="unique in the pool (default: hostname)"
    )
    parser.add_argument(
        "--advertise",
        metavar="ADDR",
        help="address routers use for vLLM (default: the --vllm/--vllm-grpc address)",
    )
    parser.add_argument("--labels", default="", help="key=value,... (zone=a,gpu=h100)")
    parser.add_argument(
        "--token",
        metavar="REF",
        default="env:IMESH_POOL_TOKEN",
        help="the pool's agent token, as env:NAME or file:PATH (default env:IMESH_POOL_TOKEN)",
    )
    client_tls_arguments(parser)
    parser.add_argument(
        "--drain-file",
        metavar="PATH",
        type=Path,
        help="drain (as on SIGTERM) once this file exists: set by vLLM's preStop hook",
    )
    parser.add_argument("--drain-timeout-s", type=float, default=120.0)
    parser.add_argument("--startup-timeout-s", type=float, default=900.0)
    parser.add_argument("--metrics", metavar="ADDR", help="serve GET /metrics here")
    parser.set_defaults(func=run_agent)


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--labels: {item!r} is not key=value", 2)
        labels[key.strip()] = value.strip()
    return labels


def run_agent(args: argparse.Namespace) -> int:
    from vllm_pool.agent import AgentSettings

    settings = AgentSettings(
        pool=args.pool_name,
        replica_id=args.replica_id,
        token=resolve_token(args.token),
        labels=parse_labels(args.labels),
        advertise=args.advertise,
        startup_timeout_s=args.startup_timeout_s,
        drain_timeout_s=args.drain_timeout_s,
        drain_file=args.drain_file,
    )
    return run(_agent(args, settings))


async def _agent(args: argparse.Namespace, settings: AgentSettings) -> int:
    from router.cli.telemetry import serve_metrics_or_exit, start_telemetry_or_exit
    from vllm_pool.agent import AgentError, ReplicaAgent
    from vllm_pool.engine_probe import EngineProbe, GrpcEngineProbe, HttpEngineProbe
    from vllm_pool.metrics import AgentCollector

    received = stop_signal()
    telemetry = start_telemetry_or_exit("imesh-replica-agent")
    stop = asyncio.Event()
    received.add_done_callback(lambda _: stop.set())
    probe: EngineProbe = (
        HttpEngineProbe(args.vllm) if args.vllm else GrpcEngineProbe(args.vllm_grpc)
    )
    try:
        async with pool_channel(args) as channel:
            agent = ReplicaAgent(probe, channel, settings)
            if telemetry.registry is not None:
                telemetry.registry.register(AgentCollector(agent, settings.pool))
            if args.metrics:
                await serve_metrics_or_exit(telemetry, args.metrics)
            await agent.run(stop)
    except AgentError as exc:
        fail(f"error: {exc}")
    finally:
        await probe.aclose()
        await telemetry.close()
    return 0
