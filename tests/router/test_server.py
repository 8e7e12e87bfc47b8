"""ChatService over a real grpc.aio server on port 0: metadata, statuses, health, reflection."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc.aio import EOF  # type: ignore[attr-defined]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from imesh.api import CallContext
from imesh.client import Client
from imesh.errors import MeshError
from imesh.v1 import chat_pb2, chat_service_pb2, chat_service_pb2_grpc, events_pb2
from router.auth import hash_api_key
from router.server import RouterServer, start_router_server
from tests.reliability.mesh_fakes import Mesh, Script, make_mesh, unavailable, user_input


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    mesh: Mesh
    server: RouterServer
    channel: grpc.aio.Channel
    stub: Any  # the generated stub types describe the sync API, not grpc.aio's


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    mesh = make_mesh(
        {
            "dep-a": [Script(tokens=["Hel", "lo"])],
            "dep-b": [Script(tokens=["a", "b"], fail_at=1, error=unavailable("cut"))],
            "dep-c": [Script(tokens=[f"t{i}" for i in range(30)])],
        },
        router={"api_key_hashes": [hash_api_key("k1")]},
    )
    server = await start_router_server(mesh.router, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield Served(mesh, server, channel, chat_service_pb2_grpc.ChatServiceStub(channel))
    finally:
        await channel.close(None)
        await server.stop(0)


AUTH = (("authorization", "Bearer k1"),)


async def read_events(
    call: Any,
    into: list[events_pb2.ChatEvent] | None = None,
) -> list[events_pb2.ChatEvent]:
    events = [] if into is None else into
    while (message := await call.read()) is not EOF:
        assert isinstance(message, chat_service_pb2.ChatStreamResponse)
        events.extend(message.events)
    return events


async def test_stream_relays_events_in_order_and_echoes_the_request_id(served: Served) -> None:
    metadata = (*AUTH, ("x-request-id", "req-42"))
    call = served.stub.ChatStream(
        chat_service_pb2.ChatStreamRequest(input=user_input("dep-a")), metadata=metadata
    )
    events = await read_events(call)
    assert [e.WhichOneof("event") for e in events] == [
        "start",
        "content",
        "content",
        "usage",
        "finish",
    ]
    assert events[0].start.request_id == "req-42"
    assert events[3].usage.cost_micros == 14
    assert ("x-request-id", "req-42") in tuple(await call.initial_metadata())
    assert await call.code() is grpc.StatusCode.OK


async def test_each_upstream_batch_is_one_message_the_first_with_the_start(
    served: Served,
) -> None:
    call = served.stub.ChatStream(
        chat_service_pb2.ChatStreamRequest(input=user_input("dep-c")), metadata=AUTH
    )
    messages = []
    while (message := await call.read()) is not EOF:
        messages.append([e.WhichOneof("event") for e in message.events])
    # The fake delivers each token in its own read, and usage with finish in the last.
    assert messages == [["start", "content"], *[["content"]] * 29, ["usage", "finish"]]


async def test_unary_chat_returns_the_aggregate(served: Served) -> None:
    response = await served.stub.Chat(
        chat_service_pb2.ChatRequest(input=user_input("dep-a")), metadata=AUTH
    )
    assert [p.text for p in response.message.content] == ["Hello"]
    assert response.deployment == "dep-a"
    assert response.finish_reason == events_pb2.FINISH_REASON_STOP


async def test_failure_after_start_sends_an_error_event_then_the_same_status(
    served: Served,
) -> None:
    call = served.stub.ChatStream(
        chat_service_pb2.ChatStreamRequest(input=user_input("dep-b")), metadata=AUTH
    )
    events: list[events_pb2.ChatEvent] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_events(call, into=events)
    assert [e.WhichOneof("event") for e in events] == ["start", "content", "error"]
    error = MeshError.from_rpc_error(caught.value)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.reason == "UPSTREAM_INTERRUPTED"
    assert events[-1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_unary_chat_failing_mid_stream_carries_the_partial_usage_in_its_status(
    served: Served,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Chat(
            chat_service_pb2.ChatRequest(input=user_input("dep-b")), metadata=AUTH
        )
    error = MeshError.from_rpc_error(caught.value)
    assert error.reason == "UPSTREAM_INTERRUPTED"
    assert error.usage is not None
    # The fake reported 10 prompt and 1 completion token before the cut: 10 + 2 micros.
    assert (error.usage.prompt_tokens, error.usage.completion_tokens) == (10, 1)
    assert error.usage.cost_micros == 12
    assert error.metadata["deployment"] == "dep-b"
    assert error.message == "stream interrupted: cut"


async def test_bad_request_names_the_field_in_bad_request_details(served: Served) -> None:
    request = user_input("dep-a", temperature=9)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Chat(chat_service_pb2.ChatRequest(input=request), metadata=AUTH)
    error = MeshError.from_rpc_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == ["input.temperature"]
    empty = chat_pb2.ChatInput(model="dep-a")
    call = served.stub.ChatStream(chat_service_pb2.ChatStreamRequest(input=empty), metadata=AUTH)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_events(call)
    error = MeshError.from_rpc_error(caught.value)
    assert error.field_violations[0].field == "input.messages"


async def test_unknown_model_is_not_found(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Chat(
            chat_service_pb2.ChatRequest(input=user_input("nope")), metadata=AUTH
        )
    assert MeshError.from_rpc_error(caught.value).reason == "MODEL_NOT_FOUND"
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [((), "MISSING_API_KEY"), ((("authorization", "Bearer wrong"),), "INVALID_API_KEY")],
)
async def test_missing_or_wrong_key_is_unauthenticated(
    served: Served, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Chat(
            chat_service_pb2.ChatRequest(input=user_input("dep-a")), metadata=metadata
        )
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert MeshError.from_rpc_error(caught.value).reason == reason


async def test_x_api_key_header_is_accepted(served: Served) -> None:
    response = await served.stub.Chat(
        chat_service_pb2.ChatRequest(input=user_input("dep-a")), metadata=(("x-api-key", "k1"),)
    )
    assert response.deployment == "dep-a"


async def test_list_models_over_grpc(served: Served) -> None:
    models = await served.stub.ListModels(chat_service_pb2.ListModelsRequest(), metadata=AUTH)
    assert {d.name for d in models.deployments} == {"dep-a", "dep-b", "dep-c"}


async def test_health_is_serving_for_the_server_and_chat_service(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for service in ("", "imesh.v1.ChatService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_chat_service_health_turns_not_serving_when_every_breaker_is_open(
    served: Served,
) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for breaker in served.mesh.router.breakers.values():
        for _ in range(breaker.config.consecutive_failures):
            permit = breaker.try_acquire()
            assert permit is not None
            breaker.record_failure(permit)
    ready = await health.Check(health_pb2.HealthCheckRequest(service="imesh.v1.ChatService"))
    live = await health.Check(health_pb2.HealthCheckRequest(service=""))
    # Readiness follows the breakers; liveness does not (no restart while providers are down).
    assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert live.status == health_pb2.HealthCheckResponse.SERVING
    async with Client(served.server.address) as client:
        assert await client.ready() is False


async def test_client_ready_is_true_for_a_serving_router_and_false_when_unreachable(
    served: Served,
) -> None:
    async with Client(served.server.address) as client:
        assert await client.ready() is True
    async with Client(f"127.0.0.1:{free_port()}") as client:
        assert await client.ready() is False


async def test_reflection_lists_chat_service_and_health(served: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    await call.done_writing()
    names = {s.name for s in reply.list_services_response.service}
    assert {"imesh.v1.ChatService", "grpc.health.v1.Health"} <= names


class RecordingAPI:
    """A ChatAPI that records the CallContext it was given."""

    def __init__(self) -> None:
        self.contexts: list[CallContext] = []

    async def chat_batches(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncIterator[list[events_pb2.ChatEvent]]:
        self.contexts.append(ctx)
        yield [events_pb2.ChatEvent(finish=events_pb2.Finish())]

    async def chat_stream(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncIterator[events_pb2.ChatEvent]:
        raise AssertionError("the server sends batches")
        yield  # pragma: no cover - makes this an async generator

    async def chat(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> chat_service_pb2.ChatResponse:
        self.contexts.append(ctx)
        return chat_service_pb2.ChatResponse(request_id=ctx.request_id or "")

    async def list_models(self, ctx: CallContext) -> chat_service_pb2.ListModelsResponse:
        return chat_service_pb2.ListModelsResponse()

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


async def test_call_context_carries_key_request_id_and_deadline() -> None:
    api = RecordingAPI()
    server = await start_router_server(api, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub: Any = chat_service_pb2_grpc.ChatServiceStub(channel)
            metadata = (("authorization", "Bearer abc"), ("x-request-id", "rid-7"))
            await stub.Chat(chat_service_pb2.ChatRequest(), metadata=metadata, timeout=5)
            await read_events(stub.ChatStream(chat_service_pb2.ChatStreamRequest()))
    finally:
        await server.stop(0)
    with_deadline, without = api.contexts
    assert (with_deadline.api_key, with_deadline.request_id) == ("abc", "rid-7")
    assert with_deadline.timeout is not None
    # grpc sends the timeout rounded up, so the server can see a hair over 5 s
    assert 2 < with_deadline.timeout <= 5.5
    assert without.api_key is None
    assert without.timeout is None
    assert without.request_id  # made up by the server when the caller sent none


class CrashingAPI(RecordingAPI):
    """A ChatAPI with a bug: every call raises an unexpected exception."""

    async def chat_batches(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncIterator[list[events_pb2.ChatEvent]]:
        raise RuntimeError(SECRET)
        yield  # pragma: no cover - makes this an async generator

    async def chat(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> chat_service_pb2.ChatResponse:
        raise RuntimeError(SECRET)

    async def list_models(self, ctx: CallContext) -> chat_service_pb2.ListModelsResponse:
        raise RuntimeError(SECRET)


SECRET = "boom at /srv/router/internal.py line 42"


async def _call(stub: Any, rpc: str) -> None:
    if rpc == "Chat":
        await stub.Chat(chat_service_pb2.ChatRequest())
    elif rpc == "ChatStream":
        await read_events(stub.ChatStream(chat_service_pb2.ChatStreamRequest()))
    else:
        await stub.ListModels(chat_service_pb2.ListModelsRequest())


@pytest.mark.parametrize("rpc", ["Chat", "ChatStream", "ListModels"])
async def test_unexpected_error_is_internal_and_leaks_nothing(
    rpc: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_router_server(CrashingAPI(), "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub: Any = chat_service_pb2_grpc.ChatServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _call(stub, rpc)
    finally:
        await server.stop(0)
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    assert "RuntimeError" not in details
    assert SECRET not in details
    assert SECRET in caplog.text  # the operator gets it, in the log
