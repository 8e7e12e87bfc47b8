"""ChatServicer without a socket (grpcio-testing): metadata to CallContext, status details,
one message per batch, and cancellation reaching the ChatAPI's stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
import grpc_testing
import pytest

from imesh.api import CallContext
from imesh.errors import MeshError, Reason
from imesh.v1 import chat_pb2, chat_service_pb2, events_pb2
from router.server import ChatServicer
from tests.support.aio_servicer import LoopThread, status_error, sync_servicer

SERVICE = chat_service_pb2.DESCRIPTOR.services_by_name["ChatService"]
CHAT = SERVICE.methods_by_name["Chat"]
STREAM = SERVICE.methods_by_name["ChatStream"]
ASK = chat_pb2.ChatInput(model="m")


def text(t: str) -> events_pb2.ChatEvent:
    return events_pb2.ChatEvent(content=events_pb2.ContentDelta(text=t))


class ScriptedAPI:
    """Plays `batches`, then raises `error`; records contexts and whether a stream closed."""

    def __init__(
        self,
        batches: Sequence[Sequence[events_pb2.ChatEvent]] = (),
        error: BaseException | None = None,
        hang: bool = False,
    ) -> None:
        self.batches = batches
        self.error = error
        self.hang = hang
        self.contexts: list[CallContext] = []
        self.closed = asyncio.Event()
        self.streaming = asyncio.Event()

    async def chat_batches(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncIterator[Sequence[events_pb2.ChatEvent]]:
        self.contexts.append(ctx)
        try:
            for batch in self.batches:
                yield batch
            self.streaming.set()
            if self.hang:
                await asyncio.Event().wait()
            if self.error is not None:
                raise self.error
        finally:
            self.closed.set()

    async def chat(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> chat_service_pb2.ChatResponse:
        self.contexts.append(ctx)
        if self.error is not None:
            raise self.error
        return chat_service_pb2.ChatResponse(deployment="d")

    async def list_models(self, ctx: CallContext) -> chat_service_pb2.ListModelsResponse:
        return chat_service_pb2.ListModelsResponse()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.close()


def serve(api: ScriptedAPI, loop: LoopThread) -> grpc_testing.Server:
    servicer = sync_servicer(ChatServicer(api), SERVICE, loop)  # type: ignore[arg-type]
    return grpc_testing.server_from_dictionary({SERVICE: servicer}, grpc_testing.strict_real_time())


def test_bearer_key_request_id_and_deadline_reach_the_call_context(loop: LoopThread) -> None:
    api = ScriptedAPI()
    metadata = (("authorization", "Bearer sk-1"), ("x-request-id", "req-7"))
    rpc = serve(api, loop).invoke_unary_unary(
        CHAT, metadata, chat_service_pb2.ChatRequest(input=ASK), 30
    )
    response, _, code, _ = rpc.termination()
    assert code is grpc.StatusCode.OK
    assert response.deployment == "d"
    [ctx] = api.contexts
    assert (ctx.api_key, ctx.request_id) == ("sk-1", "req-7")
    assert ctx.timeout is not None
    assert 0 < ctx.timeout <= 30


def test_x_api_key_is_the_key_and_a_bad_request_id_is_replaced(loop: LoopThread) -> None:
    api = ScriptedAPI()
    metadata = (("x-api-key", "sk-2"), ("x-request-id", "has space"))
    serve(api, loop).invoke_unary_unary(
        CHAT, metadata, chat_service_pb2.ChatRequest(input=ASK), None
    ).termination()
    [ctx] = api.contexts
    assert ctx.api_key == "sk-2"
    assert ctx.request_id
    assert ctx.request_id != "has space"


def test_a_mesh_error_becomes_its_code_with_status_details(loop: LoopThread) -> None:
    error = MeshError.of(Reason.ALL_BREAKERS_OPEN, "every breaker is open", retry_after=2.5)
    rpc = serve(ScriptedAPI(error=error), loop).invoke_unary_unary(
        CHAT, (), chat_service_pb2.ChatRequest(input=ASK), None
    )
    _, trailing, code, details = rpc.termination()
    assert code is grpc.StatusCode.UNAVAILABLE
    rebuilt = status_error(trailing, code, details)
    assert rebuilt.reason is Reason.ALL_BREAKERS_OPEN
    assert rebuilt.retry_after == pytest.approx(2.5)
    assert details == "every breaker is open"


def test_an_unexpected_failure_is_internal_naming_only_the_request_id(loop: LoopThread) -> None:
    api = ScriptedAPI(error=RuntimeError("secret internals"))
    rpc = serve(api, loop).invoke_unary_unary(
        CHAT, (("x-request-id", "r-9"),), chat_service_pb2.ChatRequest(input=ASK), None
    )
    _, _, code, details = rpc.termination()
    assert code is grpc.StatusCode.INTERNAL
    assert details == "internal error (request id r-9)"


def test_each_batch_is_one_stream_message_and_the_request_id_leads(loop: LoopThread) -> None:
    api = ScriptedAPI(batches=[[text("a")], [text("b"), text("c")]])
    rpc = serve(api, loop).invoke_unary_stream(
        STREAM, (("x-request-id", "rid-1"),), chat_service_pb2.ChatStreamRequest(input=ASK), None
    )
    assert dict(rpc.initial_metadata())["x-request-id"] == "rid-1"
    messages = [rpc.take_response(), rpc.take_response()]
    assert [[e.content.text for e in m.events] for m in messages] == [["a"], ["b", "c"]]
    _, code, _ = rpc.termination()
    assert code is grpc.StatusCode.OK


def test_a_failure_after_output_ends_the_stream_with_the_errors_status(loop: LoopThread) -> None:
    error = MeshError.of(Reason.UPSTREAM_INTERRUPTED, "cut")
    api = ScriptedAPI(batches=[[text("a")]], error=error)
    rpc = serve(api, loop).invoke_unary_stream(
        STREAM, (), chat_service_pb2.ChatStreamRequest(input=ASK), None
    )
    assert rpc.take_response().events[0].content.text == "a"
    trailing, code, details = rpc.termination()
    assert status_error(trailing, code, details).reason is Reason.UPSTREAM_INTERRUPTED


def test_cancelling_the_call_closes_the_apis_stream(loop: LoopThread) -> None:
    api = ScriptedAPI(batches=[[text("a")]], hang=True)
    rpc = serve(api, loop).invoke_unary_stream(
        STREAM, (), chat_service_pb2.ChatStreamRequest(input=ASK), None
    )
    rpc.take_response()
    asyncio.run_coroutine_threadsafe(api.streaming.wait(), loop.loop).result(5)
    rpc.cancel()
    asyncio.run_coroutine_threadsafe(api.closed.wait(), loop.loop).result(5)


def test_a_call_without_a_request_id_gets_a_new_random_one(loop: LoopThread) -> None:
    api = ScriptedAPI()
    server = serve(api, loop)
    for _ in range(2):
        server.invoke_unary_unary(
            CHAT, (), chat_service_pb2.ChatRequest(input=ASK), None
        ).termination()
    ids = [ctx.request_id for ctx in api.contexts]
    for request_id in ids:
        assert request_id is not None
        assert len(request_id) == 32
        assert int(request_id, 16) >= 0  # hex digits only
    assert ids[0] != ids[1]


class _Context:
    """What ChatServicer reads of a grpc.aio context, for calling a handler directly."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def time_remaining(self) -> float | None:
        return None


class HangingAPI(ScriptedAPI):
    async def chat(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> chat_service_pb2.ChatResponse:
        self.streaming.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.closed.set()
        raise AssertionError("unreachable")


async def test_unwind_cancels_a_running_unary_chat_and_waits_until_it_ended() -> None:
    api = HangingAPI()
    servicer = ChatServicer(api)  # type: ignore[arg-type]
    context: Any = _Context()
    call = asyncio.create_task(servicer.Chat(chat_service_pb2.ChatRequest(input=ASK), context))
    await asyncio.wait_for(api.streaming.wait(), 5)
    assert await servicer.unwind(5.0)
    assert api.closed.is_set()
    assert call.cancelled()
    assert await servicer.unwind(0.0)  # nothing left running: the handler untracked itself
