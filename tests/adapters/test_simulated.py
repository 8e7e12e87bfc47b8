"""SimulatedBackend: determinism, pacing, limits, failure modes, tool calls and JSON modes."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import grpc
import pytest

from adapters.config import SimulatedConfig
from adapters.deadline import NO_DEADLINE, Deadline
from adapters.simulated import SimulatedBackend
from imesh.errors import MeshError
from imesh.v1 import adapter_service_pb2, chat_pb2, events_pb2

WEATHER_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "metric": {"type": "boolean"},
            "optional": {"type": "string"},
        },
        "required": ["city", "days", "metric"],
    }
)


def sim(**overrides: Any) -> SimulatedBackend:
    fields: dict[str, Any] = {"kind": "simulated", "ttft_ms": 0, "tokens_per_second": 5000}
    fields.update(overrides)
    return SimulatedBackend(SimulatedConfig(**fields))


def request(
    text: str = "Hello there, world!", **fields: Any
) -> adapter_service_pb2.GenerateRequest:
    chat_input = chat_pb2.ChatInput(
        model="m",
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=text)])
        ],
        **fields,
    )
    return adapter_service_pb2.GenerateRequest(input=chat_input, provider_model="sim-1")


async def collect(
    backend: SimulatedBackend,
    req: adapter_service_pb2.GenerateRequest,
    deadline: Deadline = NO_DEADLINE,
) -> tuple[list[events_pb2.ChatEvent], MeshError | None]:
    events: list[events_pb2.ChatEvent] = []
    try:
        async for batch in backend.chat(req, deadline):
            assert batch
            events.extend(batch)
    except MeshError as err:
        return events, err
    return events, None


def text_of(events: list[events_pb2.ChatEvent]) -> str:
    return "".join(e.content.text for e in events if e.HasField("content"))


def usage_of(events: list[events_pb2.ChatEvent]) -> events_pb2.Usage:
    usages = [e.usage for e in events if e.HasField("usage")]
    assert usages, "no usage event"
    return usages[-1]


def finish_of(events: list[events_pb2.ChatEvent]) -> int:
    assert events[-1].HasField("finish")
    return events[-1].finish.reason


async def test_same_seed_and_request_give_the_same_text() -> None:
    first, _ = await collect(sim(seed=7), request())
    second, _ = await collect(sim(seed=7), request())
    assert text_of(first) == text_of(second)
    assert text_of(first).strip()


async def test_different_request_or_seed_gives_different_text() -> None:
    base, _ = await collect(sim(seed=7), request("one question"))
    other_request, _ = await collect(sim(seed=7), request("another question"))
    other_seed, _ = await collect(sim(seed=8), request("one question"))
    assert text_of(base) != text_of(other_request)
    assert text_of(base) != text_of(other_seed)


async def test_each_token_is_one_content_event_holding_a_word_with_its_leading_space() -> None:
    events, err = await collect(sim(completion_tokens=12), request())
    assert err is None
    contents = [e.content.text for e in events if e.HasField("content")]
    assert len(contents) == 12
    for token in contents:
        assert token.startswith(" ")
        assert len(token.split()) == 1
    assert [e.WhichOneof("event") for e in events[-2:]] == ["usage", "finish"]


async def test_stream_finishes_stop_with_configured_completion_tokens() -> None:
    events, _ = await collect(sim(completion_tokens=9), request())
    assert finish_of(events) == events_pb2.FINISH_REASON_STOP
    assert usage_of(events).completion_tokens == 9


async def test_max_tokens_cuts_with_length_and_counts_tokens_sent() -> None:
    events, _ = await collect(sim(completion_tokens=30), request(max_tokens=5))
    sent = sum(1 for e in events if e.HasField("content"))
    assert sent == 5
    assert usage_of(events).completion_tokens == sent
    assert finish_of(events) == events_pb2.FINISH_REASON_LENGTH


async def test_max_tokens_above_natural_length_finishes_stop() -> None:
    events, _ = await collect(sim(completion_tokens=4), request(max_tokens=50))
    assert usage_of(events).completion_tokens == 4
    assert finish_of(events) == events_pb2.FINISH_REASON_STOP


async def test_prompt_tokens_count_words_and_punctuation_deterministically() -> None:
    events, _ = await collect(sim(), request("Hello there, world!"))
    assert usage_of(events).prompt_tokens == 5  # Hello there , world !
    assert not usage_of(events).estimated


async def test_ttft_delays_the_first_token() -> None:
    backend = sim(ttft_ms=120, completion_tokens=1)
    start = time.monotonic()
    async for batch in backend.chat(request(), NO_DEADLINE):
        assert batch[0].HasField("content")
        break
    assert time.monotonic() - start >= 0.11


async def test_tokens_are_paced_at_tokens_per_second() -> None:
    backend = sim(tokens_per_second=100, completion_tokens=20)
    stamps: list[float] = []
    async for batch in backend.chat(request(), NO_DEADLINE):
        stamps.extend(time.monotonic() for event in batch if event.HasField("content"))
    assert len(stamps) == 20
    assert stamps[-1] - stamps[0] >= 0.18
    assert stamps[-1] - stamps[0] < 0.6


async def test_fast_rates_send_due_tokens_together_without_sleeping_per_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_sleep = asyncio.sleep
    sleeps = 0

    async def counting_sleep(delay: float, result: Any = None) -> Any:
        nonlocal sleeps
        sleeps += 1
        return await real_sleep(delay, result)

    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    events, _ = await collect(sim(tokens_per_second=20_000, completion_tokens=400), request())
    assert usage_of(events).completion_tokens == 400
    # 400 tokens over 20 ms: a sleep per token would be 400 sleeps.
    assert sleeps < 100


@pytest.mark.parametrize(
    ("kind", "code", "reason", "retry_after"),
    [
        ("unavailable", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", None),
        ("rate_limited", grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", 2.5),
        ("internal", grpc.StatusCode.INTERNAL, "UPSTREAM_UNAVAILABLE", None),
    ],
)
async def test_error_kind_fails_before_first_token_with_its_code(
    kind: str, code: grpc.StatusCode, reason: str, retry_after: float | None
) -> None:
    backend = sim(error_rate=1.0, error_kind=kind, retry_after_s=2.5)
    events, err = await collect(backend, request())
    assert events == []
    assert err is not None
    assert (err.code, err.reason, err.retry_after) == (code, reason, retry_after)


async def test_error_draws_are_reproducible_per_backend_seed() -> None:
    async def outcomes(seed: int) -> list[bool]:
        backend = sim(error_rate=0.5, seed=seed, completion_tokens=1)
        return [(await collect(backend, request()))[1] is None for _ in range(30)]

    first = await outcomes(3)
    assert first == await outcomes(3)
    assert any(first)
    assert not all(first)


async def test_rng_factory_supplies_every_random_generator() -> None:
    seeds: list[int] = []

    def factory(seed: int) -> random.Random:
        seeds.append(seed)
        return random.Random(seed)

    backend = SimulatedBackend(
        SimulatedConfig(kind="simulated", ttft_ms=0, seed=11), rng_factory=factory
    )
    await collect(backend, request())
    assert seeds[0] == 11  # the error draw's generator
    assert len(seeds) == 2  # plus one per request for the text


async def test_cut_yields_usage_so_far_then_raises_interrupted() -> None:
    events, err = await collect(sim(cut_after_tokens=4, completion_tokens=20), request())
    assert sum(1 for e in events if e.HasField("content")) == 4
    assert events[-1].HasField("usage")
    assert events[-1].usage.completion_tokens == 4
    assert err is not None
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERRUPTED")
    assert err.usage is not None
    assert err.usage.completion_tokens == 4


async def test_stall_waits_until_cancelled_and_counts_the_cancel() -> None:
    backend = sim(stall_after_tokens=3, completion_tokens=20)
    received: list[events_pb2.ChatEvent] = []
    three_in = asyncio.Event()

    async def consume() -> None:
        async for batch in backend.chat(request(), NO_DEADLINE):
            received.extend(batch)
            if len(received) == 3:
                three_in.set()

    task = asyncio.create_task(consume())
    await three_in.wait()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done, "a stalled stream must not end on its own"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(received) == 3
    assert backend.calls_cancelled == 1
    assert backend.last_cancelled_at is not None


async def test_stall_ends_at_the_deadline_with_partial_usage() -> None:
    backend = sim(stall_after_tokens=2, completion_tokens=20)
    start = time.monotonic()
    events, err = await collect(backend, request(), deadline=Deadline(start + 0.15))
    assert err is not None
    assert err.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 1.0
    assert events[-1].usage.completion_tokens == 2


async def test_deadline_before_first_token_raises_deadline_exceeded_without_events() -> None:
    backend = sim(ttft_ms=2000)
    start = time.monotonic()
    events, err = await collect(backend, request(), deadline=Deadline(start + 0.05))
    assert events == []
    assert err is not None
    assert err.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 1.0


async def test_closing_the_iterator_early_counts_a_cancel() -> None:
    backend = sim(tokens_per_second=50, completion_tokens=50)
    stream = backend.chat(request(), NO_DEADLINE)
    await anext(stream)
    assert backend.calls_started == 1
    assert backend.calls_cancelled == 0
    await stream.aclose()  # type: ignore[attr-defined]
    assert backend.calls_cancelled == 1


def tool_request(choice: chat_pb2.ToolChoice) -> adapter_service_pb2.GenerateRequest:
    tools = [
        chat_pb2.Tool(name="lookup", parameters_json='{"type":"object","properties":{}}'),
        chat_pb2.Tool(name="get_weather", parameters_json=WEATHER_SCHEMA),
    ]
    return request("weather in Paris?", tools=tools, tool_choice=choice)


async def test_forced_function_emits_tool_call_with_schema_arguments() -> None:
    choice = chat_pb2.ToolChoice(function_name="get_weather")
    events, err = await collect(sim(), tool_request(choice))
    assert err is None
    deltas = [e.tool_call for e in events if e.HasField("tool_call")]
    assert deltas[0].id.startswith("call_")
    assert deltas[0].name == "get_weather"
    pieces = [d.arguments_delta for d in deltas[1:]]
    assert 2 <= len(pieces) <= 3
    arguments = json.loads("".join(pieces))
    assert isinstance(arguments["city"], str)
    assert isinstance(arguments["days"], int)
    assert 1 <= arguments["days"] <= 7
    assert isinstance(arguments["metric"], bool)
    assert "optional" not in arguments
    assert finish_of(events) == events_pb2.FINISH_REASON_TOOL_CALLS
    assert usage_of(events).completion_tokens > 0


async def test_required_tool_choice_calls_the_first_tool() -> None:
    choice = chat_pb2.ToolChoice(mode=chat_pb2.TOOL_CHOICE_MODE_REQUIRED)
    events, _ = await collect(sim(), tool_request(choice))
    deltas = [e.tool_call for e in events if e.HasField("tool_call")]
    assert deltas[0].name == "lookup"
    assert json.loads("".join(d.arguments_delta for d in deltas)) == {}


async def test_auto_tool_choice_answers_in_text() -> None:
    choice = chat_pb2.ToolChoice(mode=chat_pb2.TOOL_CHOICE_MODE_AUTO)
    events, _ = await collect(sim(), tool_request(choice))
    assert not any(e.HasField("tool_call") for e in events)
    assert finish_of(events) == events_pb2.FINISH_REASON_STOP


async def test_unknown_forced_function_is_invalid_argument() -> None:
    choice = chat_pb2.ToolChoice(function_name="nope")
    _, err = await collect(sim(), tool_request(choice))
    assert err is not None
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_json_object_mode_streams_a_parseable_object() -> None:
    fmt = chat_pb2.ResponseFormat(type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    events, _ = await collect(sim(), request(response_format=fmt))
    assert isinstance(json.loads(text_of(events)), dict)


async def test_json_schema_mode_fills_required_properties_with_typed_values() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "level": {"enum": ["low", "high"]},
            "nested": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"],
            },
        },
        "required": ["name", "score", "tags", "level", "nested"],
    }
    fmt = chat_pb2.ResponseFormat(
        type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=json.dumps(schema)
    )
    events, _ = await collect(sim(), request(response_format=fmt))
    value = json.loads(text_of(events))
    assert isinstance(value["name"], str)
    assert isinstance(value["score"], float)
    assert isinstance(value["tags"], list)
    assert all(isinstance(t, str) for t in value["tags"])
    assert value["level"] == "low"
    assert isinstance(value["nested"]["ok"], bool)
    assert finish_of(events) == events_pb2.FINISH_REASON_STOP


async def test_hostile_schema_sizes_are_capped_and_bad_bounds_ignored() -> None:
    schema = {
        "type": "object",
        "properties": {
            "many": {"type": "array", "minItems": 10**9, "items": {"type": "integer"}},
            "odd": {"type": "integer", "minimum": "zero"},
        },
        "required": ["many", "odd"],
    }
    fmt = chat_pb2.ResponseFormat(
        type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=json.dumps(schema)
    )
    events, err = await collect(sim(), request(response_format=fmt))
    assert err is None
    value = json.loads(text_of(events))
    assert 1 <= len(value["many"]) <= 5
    assert isinstance(value["odd"], int)
