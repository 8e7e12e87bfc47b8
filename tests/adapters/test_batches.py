"""The stream unit is a batch: what one socket read delivers is one batch, at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from adapters.config import OpenAICompatibleConfig
from adapters.deadline import NO_DEADLINE, Deadline
from adapters.openai_compatible import OpenAICompatibleBackend
from imesh.errors import MeshError
from imesh.v1 import events_pb2
from tests.adapters.fakes.helpers import collect_batches, generate, kinds
from tests.adapters.fakes.server import FakeProvider, Reply

Make = Callable[[], OpenAICompatibleBackend]


@pytest.fixture
async def make(fake: FakeProvider) -> AsyncIterator[Make]:
    built: list[OpenAICompatibleBackend] = []

    def build() -> OpenAICompatibleBackend:
        config = OpenAICompatibleConfig(
            kind="openai_compatible", base_url=f"{fake.base_url}/v1", proxy="direct"
        )
        built.append(OpenAICompatibleBackend(config))
        return built[-1]

    yield build
    for backend in built:
        await backend.aclose()


async def test_a_burst_of_events_in_one_read_is_one_batch(fake: FakeProvider, make: Make) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text", burst=7))  # every event, one write
    batches, error = await collect_batches(make(), generate())
    assert error is None
    assert len(batches) == 1
    assert kinds(batches[0]) == ["content", "content", "content", "usage", "finish"]


async def test_the_first_event_is_never_held_back_behind_later_reads(
    fake: FakeProvider, make: Make
) -> None:
    # The role chunk and "Hello" arrive, then the provider goes quiet: the first output
    # must reach the caller now, not wait for more bytes.
    fake.enqueue(Reply.cassette("openai/stream_text", burst=2, stall_after_events=0))
    stream = make().chat(generate(), NO_DEADLINE)
    first = await asyncio.wait_for(anext(stream), 1.0)
    assert [e.content.text for e in first] == ["Hello"]
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_stream_handed_to_another_task_keeps_its_one_timer(
    fake: FakeProvider, make: Make
) -> None:
    # The router reads the first batch in the attempt task and the rest in the request
    # task: the call's deadline must still end it, in the task that reads then.
    fake.enqueue(Reply.cassette("openai/stream_text", burst=2, stall_after_events=0))
    stream = make().chat(generate(), Deadline.after(0.3))

    async def first_batch() -> list[events_pb2.ChatEvent]:
        return await anext(stream)

    first = await asyncio.create_task(first_batch())
    assert [e.content.text for e in first] == ["Hello"]

    async def rest() -> list[list[events_pb2.ChatEvent]]:
        return [batch async for batch in stream]

    with pytest.raises(MeshError) as caught:
        await asyncio.wait_for(asyncio.create_task(rest()), 5.0)
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.usage is not None
