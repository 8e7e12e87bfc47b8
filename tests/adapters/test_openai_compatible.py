"""OpenAI-compatible adapter: the OpenAI translation, bent only by configured quirks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from adapters.config import OpenAICompatibleConfig
from adapters.openai_compatible import OpenAICompatibleBackend
from adapters.token_estimate import TokenCounter
from imesh.v1 import chat_pb2, events_pb2
from tests.adapters.fakes.helpers import (
    SECRET_KEY,
    collect,
    finish_of,
    generate,
    message,
    text_of,
    usages,
)
from tests.adapters.fakes.server import FakeProvider, Reply

Make = Callable[..., OpenAICompatibleBackend]


@pytest.fixture
async def make(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Make]:
    monkeypatch.setenv("IMESH_TEST_COMPAT_KEY", SECRET_KEY)
    built: list[OpenAICompatibleBackend] = []

    def build(**fields: Any) -> OpenAICompatibleBackend:
        config = OpenAICompatibleConfig.model_validate(
            {
                "kind": "openai_compatible",
                "base_url": f"{fake.base_url}/v1",
                "timeouts": {"connect": 2, "read": 5, "first_byte": 5},
                **fields,
            }
        )
        backend = OpenAICompatibleBackend(config)
        built.append(backend)
        return backend

    yield build
    for backend in built:
        await backend.aclose()


async def test_without_stream_options_usage_is_counted_locally_and_flagged_estimated(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("compatible/stream_no_usage"))
    request = generate(message(chat_pb2.ROLE_USER, "What is the capital of France?"))
    events, error = await collect(make(supports_stream_options=False), request)
    assert error is None
    assert "stream_options" not in fake.requests[0].json()
    assert text_of(events) == "The capital of France is Paris."
    counter = TokenCounter("o200k_base")
    assert usages(events) == [
        events_pb2.Usage(
            prompt_tokens=await counter.count_prompt(request.input),
            completion_tokens=await counter.count_text("The capital of France is Paris."),
            estimated=True,
        )
    ]
    assert finish_of(events) == events_pb2.FINISH_REASON_LENGTH


async def test_with_stream_options_the_servers_usage_is_used(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text"))
    events, error = await collect(make(), generate())
    assert error is None
    assert fake.requests[0].json()["stream_options"] == {"include_usage": True}
    assert usages(events) == [events_pb2.Usage(prompt_tokens=19, completion_tokens=3)]


async def test_quirks_shape_the_body_max_tokens_and_developer_as_system(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text"))
    request = generate(
        message(chat_pb2.ROLE_DEVELOPER, "Be brief."),
        message(chat_pb2.ROLE_USER, "Hi"),
        model="meta-llama/Llama-3.1-8B-Instruct",
        max_tokens=50,
    )
    await collect(make(), request)
    body = fake.requests[0].json()
    assert body["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert body["max_tokens"] == 50
    assert "max_completion_tokens" not in body
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_no_api_key_sends_no_authorization_and_a_key_sends_bearer(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text"), Reply.cassette("openai/stream_text"))
    await collect(make(), generate())
    await collect(make(api_key="env:IMESH_TEST_COMPAT_KEY"), generate())
    assert "authorization" not in fake.requests[0].headers
    assert fake.requests[1].headers["authorization"] == f"Bearer {SECRET_KEY}"


async def test_tools_to_a_server_without_tool_support_are_rejected_before_any_call(
    fake: FakeProvider, make: Make
) -> None:
    request = generate(tools=[chat_pb2.Tool(name="f", parameters_json="{}")])
    events, error = await collect(make(supports_tools=False), request)
    assert events == []
    assert fake.requests == []
    assert error is not None
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_non_streaming_server_answer_becomes_events(fake: FakeProvider, make: Make) -> None:
    fake.enqueue(Reply.cassette("compatible/completion_text"))
    events, error = await collect(make(streaming=False), generate())
    assert error is None
    assert "stream" not in fake.requests[0].json()
    assert text_of(events) == "Paris."
    assert usages(events) == [events_pb2.Usage(prompt_tokens=31, completion_tokens=3)]
    assert finish_of(events) == events_pb2.FINISH_REASON_STOP


async def test_errors_map_through_the_same_table(fake: FakeProvider, make: Make) -> None:
    fake.enqueue(Reply.cassette("openai/error_503"))
    _, error = await collect(make(), generate())
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert error.metadata["provider"] == "openai_compatible"
