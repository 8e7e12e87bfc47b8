"""`imesh pool`: serve the GPU pool's registry, list its replicas, drain one."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from router.cli._common import describe, fail, run, shown_address, stop_signal

if TYPE_CHECKING:
    import grpc

    from adapters.pool_config import PoolServiceConfig
    from imesh.v1 import pool_service_pb2

DEFAULT_POOL_SERVICE = "127.0.0.1:50061"
EPILOG = """\
examples:
  imesh pool serve                                                    # membership in memory
  imesh pool serve --redis env:IMESH_POOL_REDIS_URL --tls-cert tls.crt --tls-key tls.key
  imesh pool list --token env:IMESH_POOL_READER_TOKEN
  imesh pool list --pool 10.0.0.9:50061 --pool-name gpu-a --ca ca.crt --json
  imesh pool drain vllm-0 --pool-name gpu-a                           # maintenance
two tokens: agents (and drain) present an agent token, routers and `list` a reader
token, which can never register a replica. Tokens and the Redis URL are given by
reference (env:NAME or file:PATH), never inline.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "pool",
        help="the GPU pool: serve its registry, list or drain replicas",
        description=describe(
            "The GPU pool's registry. Replica agents register vLLM replicas with it and "
            "heartbeat their load; routers watch it. `serve` runs it, `list` shows the "
            "replicas with models, labels, state, lease age and load, `drain` stops new "
            "requests to a replica while its in-flight requests finish."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="pool_command", metavar="ACTION", required=True)

    serve = actions.add_parser("serve", help="run the pool service")
    serve.add_argument("--listen", default="0.0.0.0:50061", metavar="ADDR")
    serve.add_argument(
        "--redis",
        metavar="REF",
        help="keep membership in Redis (shared, durable): its URL as env:NAME or file:PATH",
    )
    serve.add_argument("--lease-s", type=float, default=5.0, help="replica lease (default 5)")
    serve.add_argument("--metrics", metavar="ADDR", help="serve GET /metrics here")
    serve.add_argument(
        "--agent-token",
        metavar="REF",
        action="append",
        help="a token agents present (repeat while rotating; default env:IMESH_POOL_TOKEN)",
    )
    serve.add_argument(
        "--reader-token",
        metavar="REF",
        action="append",
        help="a token routers present to read (default env:IMESH_POOL_READER_TOKEN)",
    )
    serve.add_argument("--tls-cert", metavar="PATH", help="serve TLS with this certificate")
    serve.add_argument("--tls-key", metavar="PATH", help="... and this key")
    serve.add_argument("--tls-client-ca", metavar="PATH", help="require client certificates")
    serve.set_defaults(func=run_serve)

    listing = actions.add_parser("list", help="show the replicas")
    listing.add_argument("--pool-name", default="", help="one pool (default: every pool)")
    listing.add_argument("--json", action="store_true", help="print the raw response as JSON")
    _address_argument(listing)
    _token_argument(listing, "env:IMESH_POOL_READER_TOKEN", "a reader token")
    client_tls_arguments(listing)
    listing.set_defaults(func=run_list)

    drain = actions.add_parser("drain", help="send a replica no new requests")
    drain.add_argument("replica", help="the replica's id (as `imesh pool list` shows it)")
    drain.add_argument("--pool-name", default="default", help="its pool (default: default)")
    _address_argument(drain)
    _token_argument(drain)
    client_tls_arguments(drain)
    drain.set_defaults(func=run_drain)


def _address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pool",
        metavar="ADDR",
        default=DEFAULT_POOL_SERVICE,
        help=f"pool service address (default {DEFAULT_POOL_SERVICE})",
    )


def _token_argument(
    parser: argparse.ArgumentParser,
    default: str = "env:IMESH_POOL_TOKEN",
    what: str = "an agent token",
) -> None:
    parser.add_argument(
        "--token",
        metavar="REF",
        default=default,
        help=f"{what} of the pool, as env:NAME or file:PATH (default {default})",
    )


def client_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """TLS to the pool service: without --ca, the channel is plaintext."""
    parser.add_argument("--ca", metavar="PATH", help="verify the pool service with this CA")
    parser.add_argument("--cert", metavar="PATH", help="client certificate (mutual TLS)")
    parser.add_argument("--key", metavar="PATH", help="client key (mutual TLS)")
    parser.add_argument("--server-name", help="name in the pool service's certificate")


def pool_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """A channel to `args.pool`, over TLS when --ca is given; exits on unusable files."""
    from pydantic import ValidationError

    from adapters.config import ClientTLS
    from adapters.hop_auth import ClientSecurity

    try:
        tls = (
            ClientTLS(ca=args.ca, cert=args.cert, key=args.key, server_name=args.server_name)
            if args.ca
            else None
        )
        return ClientSecurity.from_config(tls, None).channel(args.pool)
    except ValidationError as exc:
        fail(str(exc), 2)
    except KeyError as exc:  # an unreadable PEM file, named
        fail(f"--ca/--cert/--key: {exc}", 2)


def resolve_token(ref: str) -> str:
    """The token's value; exits naming the reference when it is malformed or unset."""
    from pydantic import ValidationError

    from adapters.config import SecretRef

    try:
        return SecretRef.model_validate(ref).resolve()
    except ValidationError:
        fail(f"--token: give a reference (env:NAME or file:PATH), not {ref[:4]}...", 2)
    except (KeyError, OSError) as exc:
        fail(f"--token: {exc}", 2)


def run_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from adapters.pool_config import PoolServiceConfig

    tls = None
    if args.tls_cert or args.tls_key:
        tls = {"cert": args.tls_cert, "key": args.tls_key, "client_ca": args.tls_client_ca}
    try:
        config = PoolServiceConfig(
            listen=args.listen,
            agent_tokens=args.agent_token or ["env:IMESH_POOL_TOKEN"],
            reader_tokens=args.reader_token or ["env:IMESH_POOL_READER_TOKEN"],
            tls=tls,
            redis_url=args.redis,
            lease_s=args.lease_s,
        )
    except ValidationError as exc:
        fail(str(exc), 2)
    return run(_serve(config, args.metrics))


async def _serve(config: PoolServiceConfig, metrics: str | None) -> int:
    from router.cli.telemetry import serve_metrics_or_exit, start_telemetry_or_exit
    from vllm_pool.server import start_pool_server

    stop = stop_signal()
    telemetry = start_telemetry_or_exit("imesh-pool")  # before the server: it is instrumented
    try:
        server = await start_pool_server(config)
    except (KeyError, ValueError) as exc:  # a reference unset, a token reused: named, no value
        fail(f"error: {exc}", 2)
    where = "Redis" if config.redis_url else "memory"
    print(f"pool service on {shown_address(config.listen, server.port)} (membership in {where})")
    if metrics:
        await serve_metrics_or_exit(telemetry, metrics)
    await stop
    await server.stop()
    await telemetry.close()
    return 0


def run_list(args: argparse.Namespace) -> int:
    response = run(_list(args, resolve_token(args.token)))
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
    else:
        print(render(response, now_ms=int(time.time() * 1000)))
    return 0


async def _list(args: argparse.Namespace, token: str) -> pool_service_pb2.ListReplicasResponse:
    import grpc

    from imesh.v1 import pool_service_pb2, pool_service_pb2_grpc

    async with pool_channel(args) as channel:
        stub = pool_service_pb2_grpc.PoolServiceStub(channel)
        try:
            return await stub.ListReplicas(
                pool_service_pb2.ListReplicasRequest(pool=args.pool_name),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as err:
            fail(f"error: {err.code().name}: {err.details()}")


def run_drain(args: argparse.Namespace) -> int:
    run(_drain(args, resolve_token(args.token)))
    print(f"replica {args.pool_name}/{args.replica} draining: no new requests")
    return 0


async def _drain(args: argparse.Namespace, token: str) -> None:
    import grpc

    from imesh.v1 import pool_service_pb2, pool_service_pb2_grpc

    async with pool_channel(args) as channel:
        stub = pool_service_pb2_grpc.PoolServiceStub(channel)
        try:
            await stub.Drain(
                pool_service_pb2.DrainRequest(pool=args.pool_name, replica_id=args.replica),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as err:
            fail(f"error: {err.code().name}: {err.details()}")


def render(response: pool_service_pb2.ListReplicasResponse, *, now_ms: int) -> str:
    """A table: one line per replica."""
    from imesh.v1 import pool_service_pb2

    states = {
        pool_service_pb2.REPLICA_STATE_READY: "ready",
        pool_service_pb2.REPLICA_STATE_DRAINING: "draining",
    }
    transports = {
        pool_service_pb2.REPLICA_TRANSPORT_HTTP: "http",
        pool_service_pb2.REPLICA_TRANSPORT_GRPC: "grpc",
    }
    header = ("POOL", "REPLICA", "STATE", "MODELS", "ADDRESS", "LABELS", "LEASE", "LOAD")
    rows = [header]
    for r in response.replicas:
        spec, load = r.spec, r.load
        rows.append(
            (
                spec.pool,
                spec.replica_id,
                states.get(r.state, "?"),
                ",".join(spec.models),
                f"{transports.get(spec.transport, '?')} {spec.address}",
                ",".join(f"{k}={v}" for k, v in sorted(spec.labels.items())) or "-",
                f"{max(0, now_ms - r.renewed_at_ms) / 1000:.1f}s/{r.lease_ms / 1000:.0f}s",
                f"run={load.running} wait={load.waiting} kv={load.kv_cache_usage:.0%} "
                f"prefix-hit={load.prefix_cache_hit_rate:.0%}",
            )
        )
    if len(rows) == 1:
        return "no replicas"
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )
