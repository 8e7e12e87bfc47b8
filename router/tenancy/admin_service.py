"""AdminService: key create / list by prefix / revoke / rotate, guarded by the admin key."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from imesh.errors import MeshError, Reason
from imesh.v1 import admin_service_pb2, admin_service_pb2_grpc
from router.server import call_context
from router.tenancy.key_admin import KeyAdmin
from router.tenancy.keys import KeyRecord
from router.tenancy.store import StoreUnavailable

_Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    """Thin: the admin key checked in constant time, then one KeyAdmin call. A refused
    call is UNAUTHENTICATED, never a hint about which part was wrong."""

    service_name = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name

    def __init__(self, keys: KeyAdmin, admin_key: str) -> None:
        self._keys = keys
        self._admin_key = admin_key.encode()

    def add_to(self, server: grpc.aio.Server) -> None:
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(self, server)

    async def CreateKey(
        self, request: admin_service_pb2.CreateKeyRequest, context: _Context
    ) -> admin_service_pb2.CreateKeyResponse:
        await self._check_admin(context)
        issued = await _guarded(context, self._keys.create(request.tenant, request.label))
        return admin_service_pb2.CreateKeyResponse(api_key=issued.raw, key=key_info(issued.record))

    async def ListKeys(
        self, request: admin_service_pb2.ListKeysRequest, context: _Context
    ) -> admin_service_pb2.ListKeysResponse:
        await self._check_admin(context)
        listing = self._keys.list(tenant=request.tenant or None, prefix=request.prefix)
        records = await _guarded(context, listing)
        return admin_service_pb2.ListKeysResponse(keys=[key_info(r) for r in records])

    async def RevokeKey(
        self, request: admin_service_pb2.RevokeKeyRequest, context: _Context
    ) -> admin_service_pb2.RevokeKeyResponse:
        await self._check_admin(context)
        record = await _guarded(context, self._keys.revoke(request.key_id))
        return admin_service_pb2.RevokeKeyResponse(key=key_info(record))

    async def RotateKey(
        self, request: admin_service_pb2.RotateKeyRequest, context: _Context
    ) -> admin_service_pb2.RotateKeyResponse:
        await self._check_admin(context)
        rotation = self._keys.rotate(request.key_id, grace_s=request.grace_seconds)
        issued, old = await _guarded(context, rotation)
        return admin_service_pb2.RotateKeyResponse(
            api_key=issued.raw, key=key_info(issued.record), old_key=key_info(old)
        )

    async def _check_admin(self, context: _Context) -> None:
        given = (call_context(context).api_key or "").encode()
        if not hmac.compare_digest(given, self._admin_key):
            await _abort(context, MeshError.of(Reason.INVALID_API_KEY, "admin key required"))


async def _guarded(context: _Context, operation: Awaitable[T]) -> T:
    """The operation's result, or the call aborted with its error's status."""
    try:
        return await operation
    except MeshError as exc:
        await _abort(context, exc)
    except StoreUnavailable:
        await _abort(
            context, MeshError.of(Reason.TENANCY_UNAVAILABLE, "the key store is unreachable")
        )
    raise AssertionError("context.abort raises")


async def _abort(context: _Context, error: MeshError) -> None:
    status = error.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


def key_info(record: KeyRecord) -> admin_service_pb2.ApiKeyInfo:
    info = admin_service_pb2.ApiKeyInfo(
        key_id=record.key_id,
        prefix=record.prefix,
        tenant=record.tenant,
        label=record.label,
        active=record.valid_at(time.time()),
    )
    info.create_time.CopyFrom(_timestamp(record.created_at))
    if record.revoked_at is not None:
        info.revoke_time.CopyFrom(_timestamp(record.revoked_at))
    return info


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
