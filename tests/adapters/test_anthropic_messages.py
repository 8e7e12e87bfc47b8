"""Anthropic Messages adapter against a fake Anthropic server replaying recorded shapes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import grpc
import pytest

from adapters.anthropic_messages import AnthropicMessagesBackend
from adapters.anthropic_translate import AnthropicStreamTranslator
from adapters.config import AnthropicConfig
from adapters.deadline import NO_DEADLINE, Deadline
from adapters.sse import SSEEvent
from adapters.token_estimate import TokenCounter
from imesh.v1 import chat_pb2, events_pb2
from tests.adapters.fakes.helpers import (
    SECRET_KEY,
    collect,
    finish_of,
    generate,
    kinds,
    message,
    parsed_arguments,
    text_of,
    tool_calls,
    usages,
)
from tests.adapters.fakes.server import FakeProvider, Reply

Make = Callable[..., AnthropicMessagesBackend]


@pytest.fixture
async def make(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Make]:
    monkeypatch.setenv("IMESH_TEST_ANTHROPIC_KEY", SECRET_KEY)
    built: list[AnthropicMessagesBackend] = []

    def build(**timeouts: float) -> AnthropicMessagesBackend:
        config = AnthropicConfig.model_validate(
            {
                "kind": "anthropic",
                "base_url": fake.base_url,
                "api_key": "env:IMESH_TEST_ANTHROPIC_KEY",
                "default_max_tokens": 1024,
                "http2": False,
                "timeouts": {"connect": 2, "read": 5, "first_byte": 5, **timeouts},
            }
        )
        backend = AnthropicMessagesBackend(config)
        built.append(backend)
        return backend

    yield build
    for backend in built:
        await backend.aclose()


async def test_text_stream_yields_content_then_one_usage_then_stop(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_text"))
    events, error = await collect(make(), generate())
    assert error is None
    assert text_of(events) == "Hello! How can I help you today?"
    assert kinds(events)[-2:] == ["usage", "finish"]
    assert usages(events) == [events_pb2.Usage(prompt_tokens=25, completion_tokens=12)]
    assert finish_of(events) == events_pb2.FINISH_REASON_STOP


async def test_request_is_an_exact_messages_api_body(fake: FakeProvider, make: Make) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_text"))
    schema = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'
    request = generate(
        message(chat_pb2.ROLE_SYSTEM, "You are terse."),
        message(chat_pb2.ROLE_DEVELOPER, "Answer in French."),
        message(chat_pb2.ROLE_USER, "Weather in Paris?"),
        chat_pb2.Message(
            role=chat_pb2.ROLE_USER,
            content=[
                chat_pb2.ContentPart(
                    image=chat_pb2.ImagePart(url="data:image/png;base64,iVBORw0KGgo=")
                ),
                chat_pb2.ContentPart(image=chat_pb2.ImagePart(url="https://example.com/a.jpg")),
            ],
        ),
        chat_pb2.Message(
            role=chat_pb2.ROLE_ASSISTANT,
            tool_calls=[
                chat_pb2.ToolCall(
                    id="toolu_1", name="get_weather", arguments_json='{"city": "Paris"}'
                )
            ],
        ),
        message(chat_pb2.ROLE_TOOL, "21C and sunny", tool_call_id="toolu_1"),
        message(chat_pb2.ROLE_USER, "Thanks. And tomorrow?"),
        model="claude-sonnet-4-5-20250929",
        tools=[
            chat_pb2.Tool(name="get_weather", description="Weather by city", parameters_json=schema)
        ],
        tool_choice=chat_pb2.ToolChoice(mode=chat_pb2.TOOL_CHOICE_MODE_REQUIRED),
        temperature=0.7,
        stop=["\n\nHuman:"],
        user="user-42",
    )
    _events, error = await collect(make(), request)
    assert error is None
    sent = fake.requests[0]
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["x-api-key"] == SECRET_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert b'"input_schema":' + schema.encode() in sent.body  # verbatim, never re-encoded
    assert sent.json() == {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 1024,
        "system": "You are terse.\n\nAnswer in French.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris?"},
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.jpg"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "21C and sunny"}],
                    },
                    {"type": "text", "text": "Thanks. And tomorrow?"},
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather by city",
                "input_schema": json.loads(schema),
            }
        ],
        "tool_choice": {"type": "any"},
        "temperature": 0.7,
        "stop_sequences": ["\n\nHuman:"],
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }


async def test_tool_use_stream_yields_tool_call_deltas_and_cache_aware_usage(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_tool_use"))
    events, error = await collect(make(), generate())
    assert error is None
    assert text_of(events) == "Okay, let's check the weather for San Francisco, CA:"
    calls = tool_calls(events)
    assert calls[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert calls[0]["name"] == "get_weather"
    assert parsed_arguments(events) == {0: {"location": "San Francisco, CA", "unit": "fahrenheit"}}
    # prompt = input + cache reads + cache writes; cached = cache reads.
    assert usages(events) == [
        events_pb2.Usage(prompt_tokens=472 + 2048 + 120, completion_tokens=89, cached_tokens=2048)
    ]
    assert finish_of(events) == events_pb2.FINISH_REASON_TOOL_CALLS


async def test_json_schema_is_served_by_a_forced_tool_and_relayed_as_content(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_json_tool"))
    schema = '{"type":"object","properties":{"city":{"type":"string"},"temp_c":{"type":"number"}}}'
    request = generate(
        response_format=chat_pb2.ResponseFormat(
            type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            schema_name="weather",
            json_schema=schema,
        )
    )
    events, error = await collect(make(), request)
    assert error is None
    body = fake.requests[0].json()
    assert body["tool_choice"] == {"type": "tool", "name": "json_response"}
    assert body["tools"][-1]["input_schema"] == json.loads(schema)
    assert json.loads(text_of(events)) == {"city": "Paris", "temp_c": 21}
    assert tool_calls(events) == {}
    assert finish_of(events) == events_pb2.FINISH_REASON_STOP


def _sse(kind: str, data: dict[str, Any]) -> SSEEvent:
    return SSEEvent(kind, json.dumps({"type": kind, **data}).encode())


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", events_pb2.FINISH_REASON_STOP),
        ("stop_sequence", events_pb2.FINISH_REASON_STOP),
        ("max_tokens", events_pb2.FINISH_REASON_LENGTH),
        ("tool_use", events_pb2.FINISH_REASON_TOOL_CALLS),
        ("refusal", events_pb2.FINISH_REASON_CONTENT_FILTER),
    ],
)
async def test_stop_reason_maps_to_finish_reason(stop_reason: str, finish: int) -> None:
    translator = AnthropicStreamTranslator(
        generate().input, TokenCounter("cl100k_base"), provider="anthropic", secrets=()
    )
    events, failure = translator.translate(
        [
            _sse("message_start", {"message": {"usage": {"input_tokens": 5, "output_tokens": 1}}}),
            _sse(
                "content_block_start",
                {"index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f"}},
            ),
            _sse(
                "message_delta",
                {"delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": 7}},
            ),
            _sse("message_stop", {}),
        ]
    )
    assert failure is None
    assert [e.tool_call.name for e in events] == ["f"]
    assert translator.done
    final = await translator.final_events()
    assert final[0].usage == events_pb2.Usage(prompt_tokens=5, completion_tokens=7)
    assert final[1].finish.reason == finish


@pytest.mark.parametrize(
    ("cassette", "code", "reason", "detail"),
    [
        (
            "error_400",
            grpc.StatusCode.INVALID_ARGUMENT,
            "UPSTREAM_BAD_REQUEST",
            "text content blocks must be non-empty",
        ),
        (
            "error_401",
            grpc.StatusCode.PERMISSION_DENIED,
            "UPSTREAM_AUTH",
            "deployment's credentials",
        ),
        (
            "error_403",
            grpc.StatusCode.PERMISSION_DENIED,
            "UPSTREAM_AUTH",
            "does not have permission",
        ),
        (
            "error_404_model",
            grpc.StatusCode.NOT_FOUND,
            "UPSTREAM_MODEL_NOT_FOUND",
            "claude-sonnet-9-0",
        ),
        ("error_429", grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", "rate limit"),
        ("error_500", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "Internal server error"),
        ("error_529", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_OVERLOADED", "Overloaded"),
    ],
)
async def test_provider_error_status_maps_to_grpc_code_with_details(
    fake: FakeProvider, make: Make, cassette: str, code: grpc.StatusCode, reason: str, detail: str
) -> None:
    reply = Reply.cassette(f"anthropic/{cassette}")
    fake.enqueue(reply)
    events, error = await collect(make(), generate())
    assert events == []
    assert error is not None
    assert (error.code, error.reason) == (code, reason)
    assert detail in error.message
    assert error.metadata["provider"] == "anthropic"
    assert error.metadata["http_status"] == str(reply.status)


async def test_rate_limit_retry_after_header_becomes_retry_info(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/error_429"))
    _, error = await collect(make(), generate())
    assert error is not None
    assert error.rate_limited
    assert error.retry_after == 17.0


async def test_rate_limit_without_retry_after_uses_the_exhausted_windows_reset_time(
    fake: FakeProvider, make: Make
) -> None:
    base = Reply.cassette("anthropic/error_429")
    now = datetime.now(UTC)
    headers = tuple(
        (k, v)
        for k, v in base.headers
        if k != "retry-after" and not k.startswith("anthropic-ratelimit")
    )
    fake.enqueue(
        Reply(status=429, body=base.body, headers=headers).with_headers(
            anthropic_ratelimit_requests_remaining="0",
            anthropic_ratelimit_requests_reset=(now + timedelta(seconds=30)).isoformat(),
            anthropic_ratelimit_tokens_remaining="900",
            anthropic_ratelimit_tokens_reset=(now + timedelta(seconds=50)).isoformat(),
        )
    )
    _, error = await collect(make(), generate())
    assert error is not None
    assert error.retry_after is not None
    assert 27.0 < error.retry_after <= 30.0


async def test_overloaded_error_event_before_output_is_retryable_unavailable(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_overloaded_before_output"))
    events, error = await collect(make(), generate())
    assert events == []
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_OVERLOADED")
    assert error.retryable


async def test_overloaded_error_event_after_output_yields_usage_then_interrupted(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_overloaded_after_output"))
    events, error = await collect(make(), generate())
    assert text_of(events) == "The first three prime numbers are"
    assert kinds(events)[-1] == "usage"
    usage = usages(events)[-1]
    assert usage.prompt_tokens == 25  # message_start's count, exact
    assert usage.completion_tokens > 0
    assert usage.estimated
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERRUPTED")
    assert error.usage == usage
    assert error.metadata["provider_error_type"] == "overloaded_error"


async def test_cut_mid_stream_reports_estimated_usage_then_interrupted(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_text", cut_after_events=5))
    events, error = await collect(make(), generate())
    assert text_of(events) == "Hello! How can I help"
    assert kinds(events)[-1] == "usage"
    assert usages(events)[-1].estimated
    assert error is not None
    assert error.reason == "UPSTREAM_INTERRUPTED"


_STARTED = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
)


@pytest.mark.parametrize(
    "bad_event",
    [
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":"x"}\n\n',
        b"event: message_delta\n"
        b'data: {"type":"message_delta","delta":{},"usage":{"output_tokens":{"n":1}}}\n\n',
    ],
    ids=["string_delta", "object_count"],
)
async def test_an_event_of_the_wrong_shape_after_output_yields_usage_then_interrupted(
    fake: FakeProvider, make: Make, bad_event: bytes
) -> None:
    fake.enqueue(Reply(body=_STARTED + bad_event, streamed=True))
    events, error = await collect(make(), generate())
    assert text_of(events) == "Hi"
    assert kinds(events)[-1] == "usage"
    assert usages(events)[-1].prompt_tokens == 25
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERRUPTED")
    assert error.usage == usages(events)[-1]


async def test_cut_before_output_is_unavailable_without_events(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_text", cut_after_events=1))
    events, error = await collect(make(), generate())
    assert events == []
    assert error is not None
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.retryable


async def test_stall_before_headers_is_deadline_exceeded_after_first_byte_timeout(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply(stall_before_headers=True))
    started = time.monotonic()
    events, error = await collect(make(first_byte=0.2), generate())
    assert events == []
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
    assert time.monotonic() - started < 2.0
    await asyncio.wait_for(fake.disconnected.wait(), 1.0)


async def test_stall_after_headers_before_output_is_deadline_exceeded(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_text", stall_after_events=3))
    events, error = await collect(make(first_byte=0.2), generate())
    assert events == []
    assert error is not None
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_stall_after_output_hits_read_timeout_and_reports_usage(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_text", stall_after_events=5))
    events, error = await collect(make(read=0.3, first_byte=0.3), generate())
    assert text_of(events) == "Hello! How can I help"
    assert kinds(events)[-1] == "usage"
    assert error is not None
    assert error.reason == "UPSTREAM_INTERRUPTED"


async def test_caller_deadline_bounds_the_wait_before_first_byte(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply(stall_before_headers=True))
    started = time.monotonic()
    _, error = await collect(make(), generate(), deadline=Deadline.after(0.2))
    assert error is not None
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0


async def test_closing_the_stream_closes_the_upstream_connection_within_100ms(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_text", stall_after_events=4))
    stream = make().chat(generate(), NO_DEADLINE)
    first = await anext(stream)
    assert first[0].content.text == "Hello"
    closed_at = time.monotonic()
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(fake.disconnected.wait(), 0.1)
    assert fake.disconnected_at is not None
    assert fake.disconnected_at - closed_at < 0.1


async def test_cancelling_the_consumer_task_closes_the_upstream_connection(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("anthropic/stream_text", stall_after_events=4))
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in make().chat(generate(), NO_DEADLINE):
            got_first.set()

    task = asyncio.create_task(consume())
    await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.disconnected.wait(), 0.1)


async def test_api_key_never_appears_in_errors_or_logs(
    fake: FakeProvider, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = json.dumps(
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": f"bad key {SECRET_KEY}"},
        }
    ).encode()
    fake.enqueue(
        Reply.cassette("anthropic/error_401"),
        Reply(status=400, body=echo, headers=(("content-type", "application/json"),)),
        Reply.cassette("anthropic/error_429"),
        Reply.cassette("anthropic/error_529"),
    )
    backend = make()
    for _ in range(4):
        _, error = await collect(backend, generate())
        assert error is not None
        for text in (str(error), error.message, repr(error), *error.metadata.values()):
            assert SECRET_KEY not in text
    assert fake.requests[0].headers["x-api-key"] == SECRET_KEY  # it was really used
    assert SECRET_KEY not in caplog.text
    assert SECRET_KEY not in repr(backend)


@pytest.mark.parametrize("cassette", ["stream_text", "stream_tool_use", "stream_json_tool"])
async def test_official_sdk_parses_the_fakes_streams(fake: FakeProvider, cassette: str) -> None:
    fake.enqueue(Reply.cassette(f"anthropic/{cassette}"))
    client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="x", max_retries=0)
    async with client.messages.stream(
        model="claude-fake",
        max_tokens=64,
        messages=[{"role": "user", "content": "Hello"}],
    ) as stream:
        final = await stream.get_final_message()
    await client.close()
    assert final.stop_reason in ("end_turn", "tool_use")
    assert final.usage.output_tokens > 1
    for block in final.content:
        if block.type == "tool_use":
            assert isinstance(block.input, dict)
            assert block.input


@pytest.mark.parametrize(
    ("cassette", "sdk_error"),
    [
        ("error_400", anthropic.BadRequestError),
        ("error_401", anthropic.AuthenticationError),
        ("error_403", anthropic.PermissionDeniedError),
        ("error_404_model", anthropic.NotFoundError),
        ("error_429", anthropic.RateLimitError),
        ("error_500", anthropic.InternalServerError),
        ("error_529", anthropic.APIStatusError),
        ("stream_overloaded_before_output", anthropic.APIStatusError),
    ],
)
async def test_official_sdk_reads_the_fakes_errors(
    fake: FakeProvider, cassette: str, sdk_error: type[Exception]
) -> None:
    fake.enqueue(Reply.cassette(f"anthropic/{cassette}"))
    client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="x", max_retries=0)
    with pytest.raises(sdk_error) as caught:
        async with client.messages.stream(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            await stream.get_final_message()
    await client.close()
    body = getattr(caught.value, "body", None)
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["message"]


async def test_sequential_streams_reuse_one_pooled_connection(
    fake: FakeProvider, make: Make
) -> None:
    backend = make()
    for _ in range(3):
        fake.enqueue(Reply.cassette("anthropic/stream_text"))
        _, error = await collect(backend, generate())
        assert error is None
    assert fake.connections == 1


def whole_message(content: list[dict[str, Any]], stop_reason: str) -> Reply:
    message = {
        "id": "msg_whole",
        "type": "message",
        "role": "assistant",
        "model": "claude-fake",
        "content": content,
        "stop_reason": stop_reason,
        "usage": {
            "input_tokens": 20,
            "cache_read_input_tokens": 5,
            "cache_creation_input_tokens": 0,
            "output_tokens": 9,
        },
    }
    return Reply(headers=(("content-type", "application/json"),), body=json.dumps(message).encode())


async def test_a_whole_request_makes_one_non_streaming_call_with_the_same_events(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(whole_message([{"type": "text", "text": "Hello there"}], "end_turn"))
    request = generate()
    request.whole = True
    events, error = await collect(make(), request)
    assert error is None
    assert "stream" not in fake.requests[0].json()
    assert text_of(events) == "Hello there"
    assert usages(events) == [
        events_pb2.Usage(prompt_tokens=25, completion_tokens=9, cached_tokens=5)
    ]
    assert finish_of(events) == events_pb2.FINISH_REASON_STOP


async def test_a_whole_message_with_tool_use_gives_tool_calls(
    fake: FakeProvider, make: Make
) -> None:
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"c": "Oslo"}}
    fake.enqueue(whole_message([{"type": "text", "text": "Checking."}, tool_use], "tool_use"))
    request = generate()
    request.whole = True
    events, error = await collect(make(), request)
    assert error is None
    assert text_of(events) == "Checking."
    call = tool_calls(events)[0]
    assert (call["id"], call["name"]) == ("toolu_1", "get_weather")
    assert parsed_arguments(events) == {0: {"c": "Oslo"}}
    assert finish_of(events) == events_pb2.FINISH_REASON_TOOL_CALLS


async def test_a_whole_json_mode_message_is_relayed_as_content(
    fake: FakeProvider, make: Make
) -> None:
    answer = {"type": "tool_use", "id": "t", "name": "json_response", "input": {"city": "Paris"}}
    fake.enqueue(whole_message([answer], "tool_use"))
    request = generate(
        response_format=chat_pb2.ResponseFormat(type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    )
    request.whole = True
    events, error = await collect(make(), request)
    assert error is None
    assert json.loads(text_of(events)) == {"city": "Paris"}
    assert tool_calls(events) == {}
    assert finish_of(events) == events_pb2.FINISH_REASON_STOP
