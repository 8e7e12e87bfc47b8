"""Tenancy through the REST edge and the gRPC client: 401 without a key, 429 with
Retry-After and x-ratelimit-* headers past a limit, GET /v1/usage for the caller's tenant
only, and imesh.Client.get_usage over the router's UsageService."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from adapters.registry import build_backends
from gateway.server import GatewayServer, start_gateway
from gateway.settings import GatewaySettings
from imesh.client import Client
from imesh.errors import MeshError, Reason
from imesh.v1 import chat_pb2, usage_service_pb2
from router.server import RouterServer, start_router_server
from router.service import ChatRouter
from router.tenancy.tenancy import Tenancy
from tests.router.tenancy.test_router_tenancy import config

BODY = {"model": "fast", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Mesh:
    tenancy: Tenancy
    server: RouterServer
    http: httpx.AsyncClient

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    cfg = config(requests_per_minute=3)
    assert cfg.tenancy is not None
    tenancy = Tenancy.build(cfg.tenancy, cfg)
    await tenancy.start()
    router = ChatRouter(
        cfg,
        build_backends(cfg.providers),
        sinks=tenancy.sinks,
        authenticator=tenancy.authenticator,
        admitters=tenancy.admitters,
    )
    server = await start_router_server(router, "127.0.0.1:0", services=tenancy.services)
    edge: GatewayServer = await start_gateway(
        router, GatewaySettings(), "127.0.0.1:0", usage=tenancy.usage_api
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.port}") as http:
            yield Mesh(tenancy, server, http)
    finally:
        await edge.stop()
        await server.stop(0)
        await router.aclose()
        await tenancy.aclose()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_the_edge_refuses_without_a_key_and_says_429_with_rate_limit_headers(
    mesh: Mesh,
) -> None:
    key = (await mesh.tenancy.keys.create("team-a")).raw
    anonymous = await mesh.http.post("/v1/chat/completions", json=BODY)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_api_key"
    denied = await mesh.http.post(
        "/v1/chat/completions", json=BODY | {"model": "auto"}, headers=bearer(key)
    )
    assert denied.status_code == 403
    for _ in range(3):
        ok = await mesh.http.post("/v1/chat/completions", json=BODY, headers=bearer(key))
        assert ok.status_code == 200
    limited = await mesh.http.post("/v1/chat/completions", json=BODY, headers=bearer(key))
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.headers["x-ratelimit-limit-requests"] == "3"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.headers["x-ratelimit-reset-requests"].endswith("s")


async def test_get_v1_usage_answers_for_the_callers_tenant_only(mesh: Mesh) -> None:
    key_a = (await mesh.tenancy.keys.create("team-a")).raw
    key_b = (await mesh.tenancy.keys.create("team-b")).raw
    for key in (key_a, key_a, key_b):
        ok = await mesh.http.post("/v1/chat/completions", json=BODY, headers=bearer(key))
        assert ok.status_code == 200
    mine = (await mesh.http.get("/v1/usage", headers=bearer(key_a))).json()
    assert mine["object"] == "usage"
    assert mine["tenant"] == "team-a"
    assert [(r["model"], r["attempts"]) for r in mine["data"]] == [("fast", 2)]
    assert mine["data"][0]["date"] == dt.datetime.now(dt.UTC).date().isoformat()
    assert mine["total"]["cost_micros"] > 0
    other = await mesh.http.get("/v1/usage?tenant=team-b", headers=bearer(key_a))
    assert other.status_code == 403
    assert (await mesh.http.get("/v1/usage")).status_code == 401
    bad = await mesh.http.get("/v1/usage?start_date=yesterday", headers=bearer(key_a))
    assert bad.status_code == 400


async def test_the_grpc_client_reads_its_tenants_usage(mesh: Mesh) -> None:
    key_b = (await mesh.tenancy.keys.create("team-b")).raw
    await mesh.http.post("/v1/chat/completions", json=BODY, headers=bearer(key_b))
    async with Client(mesh.grpc_address, api_key=key_b) as client:
        usage = await client.get_usage(usage_service_pb2.GetUsageRequest())
    assert (usage.tenant, usage.total.attempts) == ("team-b", 1)
    async with Client(mesh.grpc_address, api_key="imk_bogus") as client:
        with pytest.raises(MeshError) as caught:
            await client.get_usage(usage_service_pb2.GetUsageRequest())
    assert caught.value.reason is Reason.INVALID_API_KEY


async def test_answers_carry_the_tenants_standing_as_x_ratelimit_headers(mesh: Mesh) -> None:
    key = (await mesh.tenancy.keys.create("team-a")).raw
    unary = await mesh.http.post("/v1/chat/completions", json=BODY, headers=bearer(key))
    assert unary.headers["x-ratelimit-limit-requests"] == "3"
    assert unary.headers["x-ratelimit-remaining-requests"] == "2"
    assert float(unary.headers["x-ratelimit-reset-requests"].removesuffix("s")) > 0
    assert "x-ratelimit-limit-tokens" not in unary.headers  # team-a has no TPM limit
    streamed = await mesh.http.post(
        "/v1/chat/completions", json=BODY | {"stream": True}, headers=bearer(key)
    )
    assert streamed.status_code == 200
    assert streamed.headers["x-ratelimit-remaining-requests"] == "1"
    async with Client(mesh.grpc_address, api_key=key) as client:
        first = await anext(aiter(client.chat_stream(chat_input())))
    assert first.start.rate_limit.remaining_requests == 0


async def test_without_a_limit_no_rate_limit_headers_are_sent(mesh: Mesh) -> None:
    key = (await mesh.tenancy.keys.create("team-b")).raw  # no limits at all
    answer = await mesh.http.post("/v1/chat/completions", json=BODY, headers=bearer(key))
    assert answer.status_code == 200
    assert not [h for h in answer.headers if h.startswith("x-ratelimit-")]


def chat_input() -> chat_pb2.ChatInput:
    text = chat_pb2.ContentPart(text="hi")
    message = chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[text])
    return chat_pb2.ChatInput(model="fast", max_tokens=8, messages=[message])
