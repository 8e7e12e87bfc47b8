"""UsageService and AdminService over real gRPC: the admin key guards key administration,
a revoke reaches a second router, and a tenant sees its own usage only."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from imesh.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    usage_service_pb2,
    usage_service_pb2_grpc,
)
from router.tenancy.admin_service import AdminServicer
from router.tenancy.tenancy import Tenancy
from router.tenancy.usage_service import TenantUsageAPI, UsageServicer
from tests.router.tenancy.support import mesh, settings
from tests.router.tenancy.test_usage import event
from tests.support.redis_server import RedisServer

ADMIN = "admin-key-for-tests"


@dataclass
class Router:
    tenancy: Tenancy
    server: grpc.aio.Server
    channel: grpc.aio.Channel

    @property
    def admin(self) -> Any:  # the stubs' types are the sync API's
        return admin_service_pb2_grpc.AdminServiceStub(self.channel)

    @property
    def usage(self) -> Any:
        return usage_service_pb2_grpc.UsageServiceStub(self.channel)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> None:
    monkeypatch.setenv("IMESH_TEST_KEY_SECRET", "a-shared-secret-of-the-test-routers")
    monkeypatch.setenv("IMESH_TEST_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("IMESH_TEST_REDIS_URL", redis_server.url)


@pytest.fixture
async def routers(env: None, redis_client: aioredis.Redis) -> AsyncIterator[list[Router]]:
    """Two routers sharing one Redis, each serving the usage and admin services."""
    started: list[Router] = []
    for _ in range(2):
        tenancy = Tenancy.build(settings("IMESH_TEST_REDIS_URL"), mesh())
        await tenancy.start()
        server = grpc.aio.server()
        usage_api = TenantUsageAPI(
            tenancy.authenticator, tenancy.usage, tenants=("team-a", "team-b"), admin_key=ADMIN
        )
        UsageServicer(usage_api).add_to(server)
        AdminServicer(tenancy.keys, ADMIN).add_to(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        started.append(Router(tenancy, server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")))
    try:
        yield started
    finally:
        for router in started:
            await router.channel.close(None)
            await router.server.stop(None)
            await router.tenancy.aclose()


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


async def test_key_administration_needs_the_admin_key(routers: list[Router]) -> None:
    request = admin_service_pb2.CreateKeyRequest(tenant="team-a")
    for metadata in ((), bearer("not-the-admin-key")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await routers[0].admin.CreateKey(request, metadata=metadata)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    created = await routers[0].admin.CreateKey(request, metadata=bearer(ADMIN))
    assert created.api_key.startswith(created.key.prefix + "_")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await routers[0].admin.CreateKey(
            admin_service_pb2.CreateKeyRequest(tenant="nobody"), metadata=bearer(ADMIN)
        )
    assert unknown.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_listing_shows_prefixes_never_keys(routers: list[Router]) -> None:
    admin = routers[0].admin
    a = await admin.CreateKey(
        admin_service_pb2.CreateKeyRequest(tenant="team-a"), metadata=bearer(ADMIN)
    )
    await admin.CreateKey(
        admin_service_pb2.CreateKeyRequest(tenant="team-b"), metadata=bearer(ADMIN)
    )
    listed = await admin.ListKeys(
        admin_service_pb2.ListKeysRequest(prefix=a.key.prefix), metadata=bearer(ADMIN)
    )
    assert [k.key_id for k in listed.keys] == [a.key.key_id]
    assert a.api_key not in str(listed)
    by_tenant = await admin.ListKeys(
        admin_service_pb2.ListKeysRequest(tenant="team-b"), metadata=bearer(ADMIN)
    )
    assert [k.tenant for k in by_tenant.keys] == ["team-b"]


async def test_a_key_revoked_on_one_router_stops_working_on_the_other_within_seconds(
    routers: list[Router],
) -> None:
    first, second = routers
    created = await first.admin.CreateKey(
        admin_service_pb2.CreateKeyRequest(tenant="team-a"), metadata=bearer(ADMIN)
    )
    today = usage_service_pb2.GetUsageRequest()
    await second.usage.GetUsage(today, metadata=bearer(created.api_key))  # cached as valid
    await first.admin.RevokeKey(
        admin_service_pb2.RevokeKeyRequest(key_id=created.key.key_id), metadata=bearer(ADMIN)
    )
    start = time.monotonic()
    refused: grpc.StatusCode | None = None
    while refused is None and time.monotonic() - start < 2.0:
        try:
            await second.usage.GetUsage(today, metadata=bearer(created.api_key))
        except grpc.aio.AioRpcError as exc:
            refused = exc.code()
        await asyncio.sleep(0.02)
    assert refused is grpc.StatusCode.UNAUTHENTICATED  # within 2 s (key cache: 0.2 s)


async def test_rotation_issues_a_new_key_and_the_old_one_ends_after_its_grace(
    routers: list[Router],
) -> None:
    admin = routers[0].admin
    old = await admin.CreateKey(
        admin_service_pb2.CreateKeyRequest(tenant="team-b"), metadata=bearer(ADMIN)
    )
    rotated = await admin.RotateKey(
        admin_service_pb2.RotateKeyRequest(key_id=old.key.key_id, grace_seconds=60),
        metadata=bearer(ADMIN),
    )
    assert rotated.key.tenant == "team-b"
    assert rotated.old_key.active  # still inside its grace period
    today = usage_service_pb2.GetUsageRequest()
    for key in (old.api_key, rotated.api_key):
        assert (await routers[1].usage.GetUsage(today, metadata=bearer(key))).tenant == "team-b"


async def test_each_tenant_sees_its_own_usage_and_no_other(routers: list[Router]) -> None:
    admin = routers[0].admin
    keys = {
        t: (
            await admin.CreateKey(
                admin_service_pb2.CreateKeyRequest(tenant=t), metadata=bearer(ADMIN)
            )
        ).api_key
        for t in ("team-a", "team-b")
    }
    sink = routers[0].tenancy.sink
    for e in (event("team-a", tokens=3), event("team-a", tokens=4), event("team-b", tokens=50)):
        sink.emit(e)
    today = usage_service_pb2.GetUsageRequest()
    deadline = time.monotonic() + 5
    while True:
        got_a = await routers[1].usage.GetUsage(today, metadata=bearer(keys["team-a"]))
        if got_a.total.attempts == 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert (got_a.tenant, got_a.total.attempts, got_a.total.prompt_tokens) == ("team-a", 2, 7)
    got_b = await routers[1].usage.GetUsage(today, metadata=bearer(keys["team-b"]))
    assert (got_b.tenant, got_b.total.attempts, got_b.total.prompt_tokens) == ("team-b", 1, 50)
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await routers[1].usage.GetUsage(today)
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await routers[1].usage.GetUsage(
            usage_service_pb2.GetUsageRequest(tenant="team-b"), metadata=bearer(keys["team-a"])
        )
    assert other.value.code() is grpc.StatusCode.PERMISSION_DENIED
    by_admin = await routers[1].usage.GetUsage(
        usage_service_pb2.GetUsageRequest(tenant="team-b"), metadata=bearer(ADMIN)
    )
    assert (by_admin.tenant, by_admin.total.prompt_tokens) == ("team-b", 50)


async def test_the_aggregators_blocking_reads_are_not_mistaken_for_an_outage(
    routers: list[Router], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="router.tenancy")
    await asyncio.sleep(2.5)  # more than one blocking read, each longer than redis_timeout_s
    assert [r.getMessage() for r in caplog.records] == []
