"""OpenAI Chat Completions adapter against a fake OpenAI server replaying recorded shapes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import openai
import pytest

from adapters.config import OpenAIConfig
from adapters.deadline import NO_DEADLINE, Deadline
from adapters.openai_chat import OpenAIChatBackend
from adapters.openai_translate import OpenAIStreamTranslator, events_from_completion
from adapters.sse import SSEEvent
from adapters.stream_translator import MALFORMED
from adapters.token_estimate import TokenCounter
from imesh.errors import Reason
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

Make = Callable[..., OpenAIChatBackend]


@pytest.fixture
async def make(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Make]:
    monkeypatch.setenv("IMESH_TEST_OPENAI_KEY", SECRET_KEY)
    built: list[OpenAIChatBackend] = []

    def build(streaming: bool = True, **timeouts: float) -> OpenAIChatBackend:
        config = OpenAIConfig.model_validate(
            {
                "kind": "openai",
                "base_url": f"{fake.base_url}/v1",
                "api_key": "env:IMESH_TEST_OPENAI_KEY",
                "organization": "org-test",
                "streaming": streaming,
                "http2": False,
                "timeouts": {"connect": 2, "read": 5, "first_byte": 5, **timeouts},
            }
        )
        backend = OpenAIChatBackend(config)
        built.append(backend)
        return backend

    yield build
    for backend in built:
        await backend.aclose()


async def test_text_stream_yields_content_then_provider_usage_then_stop(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text"))
    events, error = await collect(make(), generate())
    assert error is None
    assert text_of(events) == "Hello there!"
    assert kinds(events)[-2:] == ["usage", "finish"]
    assert usages(events) == [events_pb2.Usage(prompt_tokens=19, completion_tokens=3)]
    assert finish_of(events) == events_pb2.FINISH_REASON_STOP


async def test_parallel_tool_call_deltas_are_relayed_by_index_with_cached_and_reasoning_usage(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_tool_calls"))
    events, error = await collect(make(), generate())
    assert error is None
    calls = tool_calls(events)
    assert [calls[0]["id"], calls[0]["name"]] == ["call_Vx1mN3bQ8rT5yW2kL9pZ4cHd", "get_weather"]
    assert [calls[1]["id"], calls[1]["name"]] == ["call_Qs7dF2gH9jK4lZ1xC8vB5nMa", "get_time"]
    assert parsed_arguments(events) == {0: {"city": "Paris"}, 1: {"tz": "Europe/Paris"}}
    assert usages(events) == [
        events_pb2.Usage(
            prompt_tokens=1840, completion_tokens=211, cached_tokens=1536, reasoning_tokens=128
        )
    ]
    assert finish_of(events) == events_pb2.FINISH_REASON_TOOL_CALLS


async def test_request_is_an_exact_chat_completions_body(fake: FakeProvider, make: Make) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text"))
    params = '{"type": "object", "properties": {"city": {"type": "string"}}}'
    schema = '{"type":"object","properties":{"answer":{"type":"string"}},"required":["answer"]}'
    request = generate(
        message(chat_pb2.ROLE_DEVELOPER, "Be brief."),
        chat_pb2.Message(
            role=chat_pb2.ROLE_USER,
            content=[
                chat_pb2.ContentPart(text="What is this?"),
                chat_pb2.ContentPart(
                    image=chat_pb2.ImagePart(
                        url="https://example.com/a.png", detail=chat_pb2.IMAGE_DETAIL_LOW
                    )
                ),
            ],
        ),
        chat_pb2.Message(
            role=chat_pb2.ROLE_ASSISTANT,
            tool_calls=[
                chat_pb2.ToolCall(id="call_1", name="get_weather", arguments_json='{"city":"Oslo"}')
            ],
        ),
        message(chat_pb2.ROLE_TOOL, "-3C", tool_call_id="call_1"),
        model="gpt-4o-mini",
        tools=[
            chat_pb2.Tool(
                name="get_weather", description="Weather", parameters_json=params, strict=True
            )
        ],
        tool_choice=chat_pb2.ToolChoice(function_name="get_weather"),
        response_format=chat_pb2.ResponseFormat(
            type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            schema_name="answer",
            json_schema=schema,
            strict=True,
        ),
        temperature=0.2,
        top_p=0.9,
        max_tokens=256,
        stop=["END"],
        seed=7,
        user="user-42",
    )
    _, error = await collect(make(), request)
    assert error is None
    sent = fake.requests[0]
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert sent.headers["openai-organization"] == "org-test"
    assert b'"parameters":' + params.encode() in sent.body  # verbatim, never re-encoded
    assert sent.json() == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/a.png", "detail": "low"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "-3C"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": json.loads(params),
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": json.loads(schema), "strict": True},
        },
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 256,
        "stop": ["END"],
        "seed": 7,
        "user": "user-42",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_non_streaming_mode_turns_the_whole_answer_into_the_same_events(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/completion_tool_calls"))
    events, error = await collect(make(streaming=False), generate())
    assert error is None
    assert "stream" not in fake.requests[0].json()
    assert parsed_arguments(events) == {0: {"city": "Oslo"}}
    assert usages(events) == [events_pb2.Usage(prompt_tokens=82, completion_tokens=17)]
    assert finish_of(events) == events_pb2.FINISH_REASON_TOOL_CALLS


@pytest.mark.parametrize(
    ("cassette", "code", "reason", "detail"),
    [
        ("error_400", grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_BAD_REQUEST", "string too long"),
        (
            "error_401",
            grpc.StatusCode.PERMISSION_DENIED,
            "UPSTREAM_AUTH",
            "deployment's credentials",
        ),
        ("error_404_model", grpc.StatusCode.NOT_FOUND, "UPSTREAM_MODEL_NOT_FOUND", "gpt-9-turbo"),
        ("error_408", grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", "Request timed out"),
        ("error_429_tokens", grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", "TPM"),
        ("error_500", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "Sorry about that"),
        ("error_502_html", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "HTTP 502"),
        ("error_503", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "overloaded"),
        ("error_504", grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", "HTTP 504"),
    ],
)
async def test_provider_error_status_maps_to_grpc_code_with_details(
    fake: FakeProvider, make: Make, cassette: str, code: grpc.StatusCode, reason: str, detail: str
) -> None:
    reply = Reply.cassette(f"openai/{cassette}")
    fake.enqueue(reply)
    events, error = await collect(make(), generate())
    assert events == []
    assert error is not None
    assert (error.code, error.reason) == (code, reason)
    assert detail in error.message
    assert "<html>" not in error.message
    assert error.metadata["provider"] == "openai"
    assert error.metadata["http_status"] == str(reply.status)


@pytest.mark.parametrize(
    ("cassette", "retry_after"),
    [
        ("error_429_tokens", 360.0),  # the exhausted window (tokens, "6m0s") decides
        ("error_429_retry_after_ms", 1.5),  # retry-after-ms beats retry-after and resets
    ],
)
async def test_rate_limit_headers_become_retry_info(
    fake: FakeProvider, make: Make, cassette: str, retry_after: float
) -> None:
    fake.enqueue(Reply.cassette(f"openai/{cassette}"))
    _, error = await collect(make(), generate())
    assert error is not None
    assert error.rate_limited
    assert error.retry_after == pytest.approx(retry_after)


async def test_error_chunk_mid_stream_yields_usage_then_interrupted(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_error_midstream"))
    events, error = await collect(make(), generate())
    assert text_of(events) == "Once upon"
    assert kinds(events)[-1] == "usage"
    assert usages(events)[-1].estimated
    assert usages(events)[-1].prompt_tokens > 0
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERRUPTED")
    assert error.metadata["provider_error_type"] == "server_error"


async def test_cut_before_the_usage_chunk_reports_an_estimate_flagged_estimated(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text", cut_after_events=4))
    events, error = await collect(make(), generate())
    assert text_of(events) == "Hello there!"
    usage = usages(events)[-1]
    assert usage.estimated
    assert usage.completion_tokens >= 2
    assert usage.prompt_tokens >= 1
    assert error is not None
    assert error.reason == "UPSTREAM_INTERRUPTED"
    assert error.usage == usage


async def test_cut_after_the_usage_chunk_reports_the_providers_usage(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text", cut_after_events=6))
    events, error = await collect(make(), generate())
    assert error is not None
    assert error.reason == "UPSTREAM_INTERRUPTED"
    assert usages(events)[-1] == events_pb2.Usage(prompt_tokens=19, completion_tokens=3)


_FIRST_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'


@pytest.mark.parametrize(
    "bad_chunk",
    [
        b'data: {"choices":[null]}\n\n',
        b'data: {"choices":[{"index":0,"delta":"x"}]}\n\n',
        b'data: {"choices":[],"usage":"x"}\n\n',
    ],
    ids=["null_choice", "string_delta", "string_usage"],
)
async def test_a_chunk_of_the_wrong_shape_after_output_yields_usage_then_interrupted(
    fake: FakeProvider, make: Make, bad_chunk: bytes
) -> None:
    fake.enqueue(Reply(body=_FIRST_CHUNK + bad_chunk, streamed=True))
    events, error = await collect(make(), generate())
    assert text_of(events) == "Hi"
    assert kinds(events)[-1] == "usage"
    assert usages(events)[-1].estimated
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERRUPTED")
    assert error.usage == usages(events)[-1]


async def test_a_whole_completion_of_the_wrong_shape_is_upstream_malformed(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply(body=b'{"choices":[null]}'))
    events, error = await collect(make(streaming=False), generate())
    assert events == []
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_MALFORMED")
    assert error.retryable


async def test_stall_before_first_byte_is_deadline_exceeded(fake: FakeProvider, make: Make) -> None:
    fake.enqueue(Reply(stall_before_headers=True))
    events, error = await collect(make(first_byte=0.2), generate())
    assert events == []
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")


async def test_stall_after_output_reports_usage_then_interrupted(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text", stall_after_events=3))
    events, error = await collect(make(read=0.3, first_byte=0.3), generate())
    assert text_of(events) == "Hello there"
    assert kinds(events)[-1] == "usage"
    assert error is not None
    assert error.reason == "UPSTREAM_INTERRUPTED"


async def test_caller_deadline_mid_stream_is_deadline_exceeded_with_usage(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text", stall_after_events=3))
    events, error = await collect(make(), generate(), deadline=Deadline.after(0.3))
    assert text_of(events) == "Hello there"
    assert error is not None
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.usage is not None
    assert error.usage == usages(events)[-1]


async def test_closing_the_stream_closes_the_upstream_connection_within_100ms(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text", stall_after_events=3))
    stream = make().chat(generate(), NO_DEADLINE)
    assert (await anext(stream))[0].content.text == "Hello"
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(fake.disconnected.wait(), 0.1)


async def test_connection_refused_is_retryable_unavailable(make: Make, fake: FakeProvider) -> None:
    backend = make()
    await fake.stop()
    _, error = await collect(backend, generate())
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")


async def test_api_key_never_appears_in_errors_or_logs(
    fake: FakeProvider, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = json.dumps(
        {"error": {"message": f"key {SECRET_KEY} is bad", "type": "invalid_request_error"}}
    )
    fake.enqueue(
        Reply.cassette("openai/error_401"),
        Reply(status=400, body=echo.encode(), headers=(("content-type", "application/json"),)),
        Reply.cassette("openai/error_429_tokens"),
        Reply.cassette("openai/error_500"),
    )
    backend = make()
    for _ in range(4):
        _, error = await collect(backend, generate())
        assert error is not None
        for text in (str(error), error.message, repr(error), *error.metadata.values()):
            assert SECRET_KEY not in text
            assert "4321" not in text  # not even the masked tail the provider echoes
    assert fake.requests[0].headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert SECRET_KEY not in caplog.text
    assert SECRET_KEY not in repr(backend)


@pytest.mark.parametrize("cassette", ["stream_text", "stream_tool_calls"])
async def test_official_sdk_parses_the_fakes_streams(fake: FakeProvider, cassette: str) -> None:
    fake.enqueue(Reply.cassette(f"openai/{cassette}"))
    client = openai.AsyncOpenAI(base_url=f"{fake.base_url}/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    await client.close()
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                arguments[call.index] = arguments.get(call.index, "") + (
                    call.function.arguments or "" if call.function else ""
                )
    assert all(json.loads(a) for a in arguments.values())


@pytest.mark.parametrize(
    ("cassette", "sdk_error"),
    [
        ("error_400", openai.BadRequestError),
        ("error_401", openai.AuthenticationError),
        ("error_404_model", openai.NotFoundError),
        ("error_429_tokens", openai.RateLimitError),
        ("error_503", openai.InternalServerError),
    ],
)
async def test_official_sdk_reads_the_fakes_errors(
    fake: FakeProvider, cassette: str, sdk_error: type[Exception]
) -> None:
    fake.enqueue(Reply.cassette(f"openai/{cassette}"))
    client = openai.AsyncOpenAI(base_url=f"{fake.base_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(sdk_error) as caught:
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    await client.close()
    body: Any = getattr(caught.value, "body", None)
    assert isinstance(body, dict)
    assert body["message"]


async def test_official_sdk_raises_on_the_fakes_mid_stream_error_chunk(fake: FakeProvider) -> None:
    fake.enqueue(Reply.cassette("openai/stream_error_midstream"))
    client = openai.AsyncOpenAI(base_url=f"{fake.base_url}/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    await client.close()


async def test_official_sdk_parses_the_fakes_whole_completion(fake: FakeProvider) -> None:
    fake.enqueue(Reply.cassette("openai/completion_tool_calls"))
    client = openai.AsyncOpenAI(base_url=f"{fake.base_url}/v1", api_key="x", max_retries=0)
    answer = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    await client.close()
    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.arguments == '{"city":"Oslo"}'  # type: ignore[union-attr]


async def test_sequential_streams_reuse_one_pooled_connection(
    fake: FakeProvider, make: Make
) -> None:
    backend = make()
    for _ in range(3):
        fake.enqueue(Reply.cassette("openai/stream_text"))
        _, error = await collect(backend, generate())
        assert error is None
    assert fake.connections == 1


async def test_tool_choice_without_tools_is_not_sent(fake: FakeProvider, make: Make) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text"))
    request = generate(tool_choice=chat_pb2.ToolChoice(mode=chat_pb2.TOOL_CHOICE_MODE_AUTO))
    _, error = await collect(make(), request)
    assert error is None
    body = fake.requests[0].json()
    assert "tool_choice" not in body  # OpenAI answers 400 to tool_choice without tools
    assert "tools" not in body


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        b'{"choices": [null]}',
        b'{"choices": [{"index": 0, "delta": {"content": 5}}]}',
        b'{"choices": [{"index": 0, "delta": {"tool_calls": [{"function": "f"}]}}]}',
        b'{"usage": [3]}',
    ],
)
def test_a_chunk_of_the_wrong_shape_is_upstream_malformed(data: bytes) -> None:
    translator = OpenAIStreamTranslator(
        generate().input, TokenCounter("o200k_base"), provider="openai", secrets=()
    )
    good = b'{"choices": [{"index": 0, "delta": {"content": "Hi"}}]}'
    events, failure = translator.translate([SSEEvent("message", good), SSEEvent("message", data)])
    assert [e.content.text for e in events] == ["Hi"]  # the events before it are kept
    assert failure is not None
    assert failure.reason is Reason.UPSTREAM_MALFORMED


async def test_a_connection_cut_before_output_is_retryable_unavailable_never_a_timeout(
    fake: FakeProvider, make: Make
) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text", cut_after_events=1))  # the role chunk
    events, error = await collect(make(), generate())
    assert events == []
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert error.retryable


async def test_a_cut_after_output_names_its_cause(fake: FakeProvider, make: Make) -> None:
    fake.enqueue(Reply.cassette("openai/stream_text", cut_after_events=3))
    _, error = await collect(make(), generate())
    assert error is not None
    assert error.reason == "UPSTREAM_INTERRUPTED"
    assert error.metadata["cause"] == "UPSTREAM_UNAVAILABLE"


async def test_a_whole_completion_gives_text_refusal_usage_and_finish_in_order() -> None:
    body = (
        b'{"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message":'
        b' {"role": "assistant", "content": "Hi", "refusal": "no more", "extra": 1},'
        b' "finish_reason": "length", "logprobs": null}], "usage": {"prompt_tokens": 9,'
        b' "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2},'
        b' "completion_tokens_details": {"reasoning_tokens": 1}}}'
    )
    events = await events_from_completion(body, generate().input, TokenCounter("o200k_base"))
    assert kinds(events) == ["content", "content", "usage", "finish"]
    assert text_of(events) == "Hino more"
    assert usages(events) == [
        events_pb2.Usage(prompt_tokens=9, completion_tokens=4, cached_tokens=2, reasoning_tokens=1)
    ]
    assert finish_of(events) == events_pb2.FINISH_REASON_LENGTH


async def test_whole_tool_calls_are_indexed_in_order_and_finish_as_tool_calls() -> None:
    body = (
        b'{"choices": [{"message": {"content": null, "tool_calls": ['
        b'{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},'
        b'{"function": {"name": "g"}}]}}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
    )
    events = await events_from_completion(body, generate().input, TokenCounter("o200k_base"))
    assert tool_calls(events) == {
        0: {"id": "a", "name": "f", "arguments": "{}"},
        1: {"id": "", "name": "g", "arguments": ""},
    }
    assert finish_of(events) == events_pb2.FINISH_REASON_TOOL_CALLS


@pytest.mark.parametrize("body", [b"{}", b'{"choices": []}', b'{"choices": [{}], "usage": null}'])
async def test_a_whole_completion_without_output_or_usage_is_an_estimate_and_a_stop(
    body: bytes,
) -> None:
    events = await events_from_completion(body, generate().input, TokenCounter("o200k_base"))
    assert kinds(events) == ["usage", "finish"]
    (usage,) = usages(events)
    assert usage.estimated
    assert usage.prompt_tokens > 0
    assert finish_of(events) == events_pb2.FINISH_REASON_STOP


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502</html>",
        b"[1, 2]",
        b'"text"',
        b'{"choices": [null]}',
        b'{"choices": {"0": {}}}',
        b'{"choices": [{"message": {"content": ["Hi"]}}]}',
        b'{"choices": [{"message": {"tool_calls": [{"function": {"arguments": {}}}]}}]}',
        b'{"choices": [{"finish_reason": 3}]}',
        b'{"usage": [3]}',
    ],
)
async def test_a_whole_completion_of_the_wrong_shape_raises_malformed(body: bytes) -> None:
    with pytest.raises(MALFORMED):
        await events_from_completion(body, generate().input, TokenCounter("o200k_base"))
