"""Batches: what one upstream read delivered reaches the caller as one batch (one gRPC
message), and the first output goes out at once, never held back for more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc.aio import EOF  # type: ignore[attr-defined]

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from imesh.api import CallContext
from imesh.v1 import adapter_service_pb2, chat_service_pb2, chat_service_pb2_grpc, events_pb2
from router.server import start_router_server
from router.service import ChatRouter
from tests.reliability.mesh_fakes import kinds, mesh_config, user_input

BURST = 500


def content(text: str) -> events_pb2.ChatEvent:
    return events_pb2.ChatEvent(content=events_pb2.ContentDelta(text=text))


class BurstBackend(Backend):
    """One read that delivered BURST tokens at once, then the end in a second read."""

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        yield [content("x") for _ in range(BURST)]
        yield [
            events_pb2.ChatEvent(usage=events_pb2.Usage(prompt_tokens=1, completion_tokens=BURST)),
            events_pb2.ChatEvent(finish=events_pb2.Finish(reason=events_pb2.FINISH_REASON_STOP)),
        ]


class GatedBackend(Backend):
    """Sends one token, then nothing until `more` is set: a router that waited for more
    output before sending the first would never send it."""

    def __init__(self) -> None:
        self.more = asyncio.Event()

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        yield [content("first")]
        await self.more.wait()
        yield [content("second")]
        yield [events_pb2.ChatEvent(finish=events_pb2.Finish(reason=events_pb2.FINISH_REASON_STOP))]


class WholeAnswerBackend(Backend):
    """The whole answer in one read (a short reply arriving in one TCP segment)."""

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        yield [
            content("Hel"),
            content("lo"),
            events_pb2.ChatEvent(usage=events_pb2.Usage(prompt_tokens=3, completion_tokens=2)),
            events_pb2.ChatEvent(finish=events_pb2.Finish(reason=events_pb2.FINISH_REASON_STOP)),
        ]


def router_over(backend: Backend) -> ChatRouter:
    return ChatRouter(mesh_config(), {name: backend for name in ("p-a", "p-b", "p-c")})


async def test_a_burst_in_one_backend_batch_reaches_the_caller_as_one_batch() -> None:
    router = router_over(BurstBackend())
    batches = [list(b) async for b in router.chat_batches(user_input("dep-a"), CallContext())]
    assert len(batches) == 2
    first, last = batches
    assert kinds(first) == ["start"] + ["content"] * BURST
    assert kinds(last) == ["usage", "finish"]  # usage and finish ride in the last batch
    assert last[0].usage.cost_micros == 1 + 2 * BURST


async def test_the_first_output_batch_is_never_held_back() -> None:
    gated = GatedBackend()
    router = router_over(gated)
    batches = router.chat_batches(user_input("dep-a"), CallContext())
    # Only the first token exists until the test sees it: waiting for more would hang.
    first = await asyncio.wait_for(anext(batches), 1.0)
    assert kinds(first) == ["start", "content"]
    assert first[1].content.text == "first"
    gated.more.set()
    rest = [list(b) async for b in batches]
    assert [kinds(b) for b in rest] == [["content"], ["usage", "finish"]]


async def test_a_whole_answer_in_one_read_is_one_batch() -> None:
    router = router_over(WholeAnswerBackend())
    batches = [list(b) async for b in router.chat_batches(user_input("dep-a"), CallContext())]
    assert [kinds(b) for b in batches] == [["start", "content", "content", "usage", "finish"]]


async def test_chat_stream_flattens_the_batches_in_order() -> None:
    router = router_over(BurstBackend())
    events = [e async for e in router.chat_stream(user_input("dep-a"), CallContext())]
    assert kinds(events) == ["start"] + ["content"] * BURST + ["usage", "finish"]


async def test_one_grpc_message_per_batch() -> None:
    router = router_over(BurstBackend())
    server = await start_router_server(router, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = chat_service_pb2_grpc.ChatServiceStub(channel)
            call = stub.ChatStream(chat_service_pb2.ChatStreamRequest(input=user_input("dep-a")))
            messages: list[list[events_pb2.ChatEvent]] = []
            while (message := await call.read()) is not EOF:
                assert isinstance(message, chat_service_pb2.ChatStreamResponse)
                messages.append(list(message.events))
        assert [len(m) for m in messages] == [1 + BURST, 2]
        assert "".join(e.content.text for e in messages[0][1:]) == "x" * BURST
    finally:
        await server.stop(0)
