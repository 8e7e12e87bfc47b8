"""UsageService: a tenant's rolled-up usage, for the tenant the caller's key names and no
other. `TenantUsageAPI` is the in-process form (the REST edge in `imesh up`); the gRPC
servicer is a thin shell over it."""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Callable, Collection
from typing import Any

import grpc

from imesh.api import CallContext
from imesh.errors import MeshError, Reason, invalid_argument
from imesh.v1 import usage_service_pb2, usage_service_pb2_grpc
from router.server import call_context
from router.tenancy.admission import TenantAuthenticator
from router.tenancy.store import StoreUnavailable
from router.tenancy.usage_store import MAX_DAYS, UsageReader, UsageRow

_Context = grpc.aio.ServicerContext[Any, Any]


class TenantUsageAPI:
    """imesh.api.UsageAPI in process. Lifecycle: build once over the authenticator and
    the usage reader of the router's Tenancy; nothing to close."""

    def __init__(
        self,
        authenticator: TenantAuthenticator,
        reader: UsageReader,
        *,
        tenants: Collection[str],
        admin_key: str | None,
        today: Callable[[], dt.date] | None = None,
    ) -> None:
        self._auth = authenticator
        self._reader = reader
        self._tenants = frozenset(tenants)
        self._admin_key = admin_key.encode() if admin_key else None
        self._today = today or (lambda: dt.datetime.now(dt.UTC).date())

    async def get_usage(
        self, request: usage_service_pb2.GetUsageRequest, ctx: CallContext
    ) -> usage_service_pb2.GetUsageResponse:
        tenant = await self._tenant(request.tenant, ctx.api_key)
        first = _day(request.start_date, "start_date") if request.start_date else self._today()
        last = _day(request.end_date, "end_date") if request.end_date else first
        if last < first:
            raise invalid_argument("end_date", "must not be before start_date")
        if (last - first).days >= MAX_DAYS:
            raise invalid_argument("end_date", f"at most {MAX_DAYS} days from start_date")
        try:
            rows = await self._reader.usage(tenant, first, last)
        except StoreUnavailable:
            raise MeshError.of(
                Reason.TENANCY_UNAVAILABLE, "usage cannot be read right now", retry_after=1.0
            ) from None
        response = usage_service_pb2.GetUsageResponse(tenant=tenant)
        for row in rows:
            response.rows.append(_row(row))
            _add(response.total, row)
        return response

    async def _tenant(self, asked: str, api_key: str | None) -> str:
        """The tenant whose usage the caller may read: its key's own, or, with the admin
        key, the one it names."""
        admin = self._admin_key is not None and hmac.compare_digest(
            (api_key or "").encode(), self._admin_key
        )
        if asked and admin:
            if asked not in self._tenants:
                raise invalid_argument("tenant", f"unknown tenant {asked!r}")
            return asked
        caller = await self._auth.authenticate(api_key)
        assert caller.tenant is not None
        if asked and asked != caller.tenant:
            raise MeshError.of(Reason.PERMISSION_DENIED, "a key reads its own tenant's usage only")
        return caller.tenant


def _day(text: str, field_name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise invalid_argument(field_name, "a UTC day as YYYY-MM-DD") from None


def _row(row: UsageRow) -> usage_service_pb2.UsageRow:
    return usage_service_pb2.UsageRow(
        date=row.day,
        model=row.model,
        attempts=row.attempts,
        failed_attempts=row.failed_attempts,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cached_tokens=row.cached_tokens,
        cost_micros=row.cost_micros,
    )


def _add(total: usage_service_pb2.UsageRow, row: UsageRow) -> None:
    total.attempts += row.attempts
    total.failed_attempts += row.failed_attempts
    total.prompt_tokens += row.prompt_tokens
    total.completion_tokens += row.completion_tokens
    total.cached_tokens += row.cached_tokens
    total.cost_micros += row.cost_micros


class UsageServicer(usage_service_pb2_grpc.UsageServiceServicer):
    """Thin: metadata to CallContext, MeshError to status."""

    service_name = usage_service_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name

    def __init__(self, api: TenantUsageAPI) -> None:
        self._api = api

    async def GetUsage(
        self, request: usage_service_pb2.GetUsageRequest, context: _Context
    ) -> usage_service_pb2.GetUsageResponse:
        try:
            return await self._api.get_usage(request, call_context(context))
        except MeshError as exc:
            status = exc.to_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise  # abort raises; this only satisfies the type checker

    def add_to(self, server: grpc.aio.Server) -> None:
        usage_service_pb2_grpc.add_UsageServiceServicer_to_server(self, server)
