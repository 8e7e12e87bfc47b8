"""The official openai SDK (sync and async) against the edge over a real ChatRouter."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pydantic

HI = [{"role": "user", "content": "hello there"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


async def test_async_non_streaming_completion_has_openai_shape(edge) -> None:
    client = edge.async_openai()
    raw = await client.chat.completions.with_raw_response.create(model="fast", messages=HI)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "fast"
    assert completion.id == "chatcmpl-" + raw.headers["x-request-id"]
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0


async def test_sync_client_non_streaming_and_streaming_agree_on_text(edge) -> None:
    def run() -> tuple[str | None, str]:
        client = edge.openai()
        whole = client.chat.completions.create(model="sim-fast", messages=HI, seed=3)
        pieces = [
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model="sim-fast", messages=HI, seed=3, stream=True
            )
            if chunk.choices
        ]
        return whole.choices[0].message.content, "".join(pieces)

    whole, streamed = await asyncio.to_thread(run)
    assert whole
    assert whole == streamed


async def test_stream_chunks_role_first_finish_then_usage_chunk(edge) -> None:
    client = edge.async_openai()
    stream = await client.chat.completions.create(
        model="fast", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 12
    content = [c for c in chunks[1:-2] if c.choices[0].delta.content]
    assert len(content) == 12
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_without_include_usage_sends_no_usage_chunk(edge) -> None:
    client = edge.async_openai()
    stream = await client.chat.completions.create(model="fast", messages=HI, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_forced_tool_call_non_streaming_returns_tool_calls(edge) -> None:
    client = edge.async_openai()
    completion = await client.chat.completions.create(
        model="fast",
        messages=HI,
        tools=[WEATHER_TOOL],
        tool_choice=FORCE_WEATHER,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    call: Any = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city", "days"}


async def test_streamed_tool_call_deltas_accumulate_to_valid_arguments(edge) -> None:
    client = edge.async_openai()
    stream = await client.chat.completions.create(
        model="fast",
        messages=HI,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        stream=True,
    )
    deltas: list[Any] = []
    finish = None
    async for chunk in stream:
        if chunk.choices:
            deltas.extend(chunk.choices[0].delta.tool_calls or [])
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    first, rest = deltas[0], deltas[1:]
    assert first.index == 0
    assert first.id
    assert first.type == "function"
    assert first.function is not None
    assert first.function.name == "get_weather"
    assert rest
    assert all(d.id is None and d.index == 0 for d in rest)
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert set(json.loads(arguments)) == {"city", "days"}


async def test_json_object_mode_returns_parseable_json(edge) -> None:
    client = edge.async_openai()
    completion = await client.chat.completions.create(
        model="fast", messages=HI, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


class Answer(pydantic.BaseModel):
    city: str
    days: int


async def test_json_schema_via_sdk_parse_helper_yields_the_model(edge) -> None:
    client = edge.async_openai()
    completion = await client.chat.completions.parse(
        model="fast",
        messages=HI,
        response_format=Answer,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Answer)


async def test_max_tokens_and_max_completion_tokens_cut_with_finish_length(edge) -> None:
    client = edge.async_openai()
    for limit in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
        completion = await client.chat.completions.create(
            model="fast",
            messages=HI,
            n=1,
            stop=["zzz"],
            seed=1,
            user="end-user-1",
            **limit,
        )
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 3


async def test_models_list_and_retrieve(edge) -> None:
    client = edge.async_openai()
    ids = [m.id async for m in client.models.list()]
    assert ids[0] == "fast"
    assert "sim-fast" in ids
    model = await client.models.retrieve("sim-fast")
    assert (model.id, model.object, model.owned_by) == ("sim-fast", "model", "sim-fast")


async def test_caller_request_id_is_echoed_and_used_for_the_completion_id(edge) -> None:
    client = edge.async_openai()
    raw = await client.chat.completions.with_raw_response.create(
        model="fast", messages=HI, extra_headers={"x-request-id": "req-abc.123"}
    )
    assert raw.headers["x-request-id"] == "req-abc.123"
    assert raw.parse().id == "chatcmpl-req-abc.123"
    assert edge.sink.records[-1].request_id == "req-abc.123"


async def test_every_response_carries_request_id_and_edge_overhead(edge) -> None:
    async with edge.http() as http:
        responses = [
            await http.get("/healthz"),
            await http.get("/v1/models"),
            await http.post("/v1/chat/completions", json={"model": "fast", "messages": HI}),
            await http.post("/v1/chat/completions", content=b"not json"),
            await http.get("/no/such/path"),
        ]
        async with http.stream(
            "POST", "/v1/chat/completions", json={"model": "fast", "messages": HI, "stream": True}
        ) as streamed:
            await streamed.aread()
        responses.append(streamed)
    for response in responses:
        assert len(response.headers["x-request-id"]) >= 16
        assert float(response.headers["x-imesh-edge-overhead-ms"]) >= 0.0


async def test_healthz_is_live_and_readyz_needs_a_closed_breaker(edge) -> None:
    async with edge.http() as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
