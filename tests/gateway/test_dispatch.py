"""The edge's route table at the ASGI level: methods, HEAD, OpenAI-style 404/405, the
`/metrics` route, an opaque 500 for a handler's bug, and the lifespan closing an owned api."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.types import Message

from gateway.app import create_app
from gateway.dispatch import EdgeApp
from gateway.metrics import EdgeObservability
from gateway.settings import GatewaySettings
from imesh.api import CallContext
from imesh.v1 import chat_service_pb2
from tests.gateway.conftest import FakeChatAPI


class BuggyAPI(FakeChatAPI):
    async def list_models(self, ctx: CallContext) -> chat_service_pb2.ListModelsResponse:
        raise RuntimeError("secret internals")


class ClosingAPI(FakeChatAPI):
    closed = 0

    async def aclose(self) -> None:
        self.closed += 1


def _models() -> chat_service_pb2.ListModelsResponse:
    return chat_service_pb2.ListModelsResponse(
        aliases=[chat_service_pb2.ModelAlias(name="fast")],
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    observability = EdgeObservability(CollectorRegistry())
    app = create_app(FakeChatAPI(models=_models()), GatewaySettings(), observability=observability)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        yield client


async def test_get_routes_answer_head_too(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.head("/healthz")).status_code == 200


async def test_a_known_path_with_another_method_is_an_openai_405(http: httpx.AsyncClient) -> None:
    response = await http.post("/healthz")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert (await http.get("/v1/chat/completions")).status_code == 405
    assert (await http.delete("/v1/models/fast")).status_code == 405


async def test_an_unknown_path_is_an_openai_404_naming_it(http: httpx.AsyncClient) -> None:
    response = await http.get("/v2/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Unknown request URL: GET /v2/nothing"
    assert "x-request-id" in response.headers


async def test_a_model_is_retrieved_by_the_rest_of_its_path(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/models/fast")).json()["id"] == "fast"
    assert (await http.get("/v1/models/fast/x")).status_code == 404


async def test_metrics_are_served_whatever_the_key_but_other_routes_refuse_a_bad_one(
    http: httpx.AsyncClient,
) -> None:
    bad = {"authorization": "Bearer bad\x7fkey"}
    metrics = await http.get("/metrics", headers=bad)
    assert metrics.status_code == 200
    assert "imesh_edge_requests" in metrics.text
    assert (await http.get("/healthz", headers=bad)).status_code == 401
    assert (await http.post("/metrics")).status_code == 404  # as any unknown URL


async def test_metrics_route_is_absent_when_metrics_are_off() -> None:
    app = create_app(FakeChatAPI(), GatewaySettings())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge"
    ) as http:
        assert (await http.get("/metrics")).status_code == 404


async def test_a_bug_in_a_handler_is_an_opaque_500(http: httpx.AsyncClient) -> None:
    app = create_app(BuggyAPI(), GatewaySettings())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge"
    ) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["error"]["code"] == "edge_internal"


async def _run_lifespan(app: EdgeApp) -> list[str]:
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    return sent


@pytest.mark.parametrize("owns_api", [True, False])
async def test_the_lifespan_closes_the_api_only_when_the_app_owns_it(owns_api: bool) -> None:
    api = ClosingAPI()
    sent = await _run_lifespan(create_app(api, GatewaySettings(), owns_api=owns_api))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert api.closed == (1 if owns_api else 0)
