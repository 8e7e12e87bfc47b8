"""The first token goes out at once, even when the upstream delivers a burst at once."""

from __future__ import annotations

from collections.abc import AsyncIterator

from adapters.backend import Backend
from imesh.api import CallContext
from adapters.coalesce import coalesce
from imesh.v1 import adapter_service_pb2, events_pb2
from router.service import ChatRouter
from tests.reliability.mesh_fakes import mesh_config, user_input

BURST = 500


class BurstBackend(Backend):
    """Yields BURST tokens without ever suspending, like an HTTP body that arrived whole."""

    def __init__(self) -> None:
        self.sent = 0

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: float | None
    ) -> AsyncIterator[events_pb2.ChatEvent]:
        for _ in range(BURST):
            self.sent += 1
            yield events_pb2.ChatEvent(content=events_pb2.ContentDelta(text="x"))
        yield events_pb2.ChatEvent(usage=events_pb2.Usage(prompt_tokens=1, completion_tokens=BURST))


def burst_router() -> tuple[ChatRouter, BurstBackend]:
    burst = BurstBackend()
    backends = {name: burst for name in ("p-a", "p-b", "p-c")}
    return ChatRouter(mesh_config(), backends), burst


async def test_router_relays_the_first_token_before_parsing_the_rest_of_a_burst() -> None:
    router, burst = burst_router()
    sent_at_first_token = None
    count = 0
    async for event in router.chat_stream(user_input("dep-a"), CallContext()):
        if event.HasField("content"):
            count += 1
            if sent_at_first_token is None:
                sent_at_first_token = burst.sent
    assert count == BURST  # nothing lost
    assert sent_at_first_token is not None
    # Without the yield after the first token the attempt fills its whole queue first.
    assert sent_at_first_token < 8


async def test_coalesced_stream_sends_the_first_event_alone_then_batches_the_burst() -> None:
    router, burst = burst_router()
    batches = coalesce(router.chat_stream(user_input("dep-a"), CallContext()), window_s=0.002)
    sizes = []
    sent_at_first_batch = None
    async for batch in batches:
        if sent_at_first_batch is None:
            sent_at_first_batch = burst.sent
        sizes.append(len(batch))
    assert sent_at_first_batch is not None
    assert sent_at_first_batch <= 2 * 16 + 2  # bounded by the attempt's yield period
    assert sum(sizes) == BURST + 3  # start, the tokens, usage, finish
    assert len(sizes) < BURST // 4  # the rest of the burst travels in few messages


async def test_burst_through_the_grpc_server_arrives_whole_and_in_order() -> None:
    from imesh.client import Client
    from router.server import start_router_server

    router, _ = burst_router()
    server = await start_router_server(router, "127.0.0.1:0")
    try:
        async with Client(f"127.0.0.1:{server.port}") as client:
            text = []
            async for event in client.chat_stream(user_input("dep-a"), CallContext()):
                if event.HasField("content"):
                    text.append(event.content.text)
        assert "".join(text) == "x" * BURST
    finally:
        await server.stop(0)
