"""`GET /v1/usage`: the query string to a GetUsageRequest, the answer to JSON."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from imesh.errors import MeshError, Reason, invalid_argument
from imesh.v1 import usage_service_pb2

USAGE_PATH = "/v1/usage"
_PARAMS = ("start_date", "end_date", "tenant")
_COUNTS = (
    "attempts",
    "failed_attempts",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_micros",
)


def usage_request(query_string: bytes) -> usage_service_pb2.GetUsageRequest:
    """`?start_date=YYYY-MM-DD&end_date=YYYY-MM-DD&tenant=T`, each optional (the router
    checks the dates and who may read which tenant)."""
    try:
        query = parse_qs(query_string.decode("ascii"), strict_parsing=False)
    except UnicodeDecodeError:
        raise invalid_argument("query", "must be ASCII") from None
    for name in query:
        if name not in _PARAMS:
            raise invalid_argument(name, f"unknown parameter (known: {', '.join(_PARAMS)})")
    values = {name: query[name][-1] for name in query}
    return usage_service_pb2.GetUsageRequest(**values)


def usage_body(response: usage_service_pb2.GetUsageResponse) -> bytes:
    """`{"object": "usage", "tenant", "data": [rows], "total"}`; counts are JSON numbers,
    cost in integer micro-dollars (`cost_micros`) and in USD (`cost_usd`)."""
    body = {
        "object": "usage",
        "tenant": response.tenant,
        "data": [_row(r) for r in response.rows],
        "total": {k: v for k, v in _row(response.total).items() if k not in ("date", "model")},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _row(row: usage_service_pb2.UsageRow) -> dict[str, object]:
    out: dict[str, object] = {"date": row.date, "model": row.model}
    out.update({k: getattr(row, k) for k in _COUNTS})
    out["cost_usd"] = row.cost_micros / 1_000_000
    return out


def no_tenancy() -> MeshError:
    return MeshError.of(Reason.UNKNOWN_URL, "this mesh runs without tenancy: no usage to report")
