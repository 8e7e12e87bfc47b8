"""`imesh models`: the router's aliases and deployments, with prices and breaker states."""

from __future__ import annotations

import argparse
from decimal import Decimal
from typing import TYPE_CHECKING

from router.cli._common import (
    add_router_arguments,
    describe,
    error_line,
    fail,
    print_message,
    router_credentials,
    run,
)

if TYPE_CHECKING:
    import grpc

    from imesh.v1 import chat_service_pb2

EPILOG = """\
examples:
  imesh models
  imesh models --router 10.0.0.5:50051 --json | jq '.deployments[].name'
prices are USD per million tokens (input / output / cached input).
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "models",
        help="list aliases and deployments",
        description=describe(
            "List the router's aliases (with their candidates and policy) and "
            "deployments (with capabilities, prices in $/Mtok and circuit-breaker state)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_router_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the raw response as JSON")
    parser.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    response = run(_fetch(args.router, router_credentials(args), args.api_key))
    print_message(response, as_json=args.json, render=render)
    return 0


async def _fetch(
    router: str, credentials: grpc.ChannelCredentials | None, api_key: str | None
) -> chat_service_pb2.ListModelsResponse:
    from imesh.api import CallContext
    from imesh.client import Client
    from imesh.errors import MeshError

    async with Client(router, api_key=api_key, credentials=credentials) as client:
        try:
            return await client.list_models(CallContext(timeout=10.0))
        except MeshError as err:
            fail(error_line(err))


def render(response: chat_service_pb2.ListModelsResponse) -> str:
    from imesh.v1 import chat_pb2, chat_service_pb2

    alias_rows = [["ALIAS", "POLICY", "CANDIDATES"]]
    for alias in response.aliases:
        alias_rows.append([alias.name, alias.policy, ", ".join(alias.candidates)])
    deployment_rows = [
        [
            "DEPLOYMENT",
            "PROVIDER",
            "MODEL",
            "CONTEXT",
            "CAPABILITIES",
            "$/MTOK IN/OUT/CACHED",
            "BREAKER",
        ]
    ]
    for d in response.deployments:
        caps = ",".join(
            chat_pb2.Capability.Name(c).removeprefix("CAPABILITY_").lower() for c in d.capabilities
        )
        price = "/".join(
            _usd(m)
            for m in (
                d.price.input_micros_per_mtok,
                d.price.output_micros_per_mtok,
                d.price.cached_input_micros_per_mtok,
            )
        )
        breaker = chat_service_pb2.BreakerState.Name(d.breaker_state)
        breaker = breaker.removeprefix("BREAKER_STATE_").lower().replace("unspecified", "?")
        deployment_rows.append(
            [d.name, d.provider, d.provider_model, str(d.context_window), caps, price, breaker]
        )
    return _table(alias_rows) + "\n\n" + _table(deployment_rows)


def _usd(micros: int) -> str:
    return format(Decimal(micros).scaleb(-6).normalize(), "f")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
