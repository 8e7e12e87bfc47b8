"""`imesh usage`: a tenant's usage per UTC day and model, as a table (or JSON)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from router.cli._common import (
    add_router_arguments,
    describe,
    fail,
    print_message,
    router_credentials,
    run,
)

if TYPE_CHECKING:
    import grpc

    from imesh.v1 import usage_service_pb2

EPILOG = """\
examples:
  imesh usage                                   # the tenant of $IMESH_API_KEY, today
  imesh usage --from 2026-11-01 --to 2026-11-30
  imesh usage --tenant search --admin-key $IMESH_ADMIN_KEY
cost is in USD (the mesh accounts in integer micro-dollars). Every attempt counts, hedge
losers and failed streams included.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "usage",
        help="a tenant's usage per day and model",
        description=describe(
            "Print a tenant's usage (attempts, tokens, cost) per UTC day and model. An API "
            "key reads its own tenant's usage; the admin key reads any tenant's (--tenant)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_router_arguments(parser)
    parser.add_argument("--tenant", default="", help="the tenant (needs --admin-key)")
    parser.add_argument(
        "--admin-key",
        metavar="KEY",
        default=os.environ.get("IMESH_ADMIN_KEY"),
        help="the admin key, to read another tenant's usage (default: $IMESH_ADMIN_KEY)",
    )
    parser.add_argument("--from", dest="start", default="", metavar="DAY", help="YYYY-MM-DD")
    parser.add_argument("--to", dest="end", default="", metavar="DAY", help="YYYY-MM-DD")
    parser.add_argument("--json", action="store_true", help="print the raw response as JSON")
    parser.set_defaults(func=run_usage)


def run_usage(args: argparse.Namespace) -> int:
    key = args.admin_key if args.tenant else args.api_key
    if not key:
        fail("error: an API key (--api-key) or, with --tenant, the admin key is required", 2)
    credentials = router_credentials(args)
    response = run(_fetch(args.router, credentials, key, args.tenant, args.start, args.end))
    print_message(response, as_json=args.json, render=render)
    return 0


async def _fetch(
    router: str,
    credentials: grpc.ChannelCredentials | None,
    key: str,
    tenant: str,
    start: str,
    end: str,
) -> usage_service_pb2.GetUsageResponse:
    from imesh.api import CallContext
    from imesh.client import Client
    from imesh.errors import MeshError
    from imesh.v1 import usage_service_pb2

    request = usage_service_pb2.GetUsageRequest(tenant=tenant, start_date=start, end_date=end)
    async with Client(router, api_key=key, credentials=credentials) as client:
        try:
            return await client.get_usage(request, CallContext(timeout=10.0))
        except MeshError as err:
            fail(f"error: {err}")


def render(response: usage_service_pb2.GetUsageResponse) -> str:
    header = ("DATE", "MODEL", "ATTEMPTS", "FAILED", "PROMPT", "COMPLETION", "CACHED", "COST $")
    rows = [header]
    for r in [*response.rows, response.total]:
        rows.append(
            (
                r.date or "total",
                r.model,
                str(r.attempts),
                str(r.failed_attempts),
                str(r.prompt_tokens),
                str(r.completion_tokens),
                str(r.cached_tokens),
                f"{r.cost_micros / 1_000_000:.6f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.rjust(w) if i >= 2 else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return f"tenant {response.tenant}\n" + "\n".join(line.rstrip() for line in lines)
