"""ChatRouter in-process: event order, settled usage and cost, unary aggregate, models list."""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import pytest

from imesh.api import CallContext
from imesh.errors import MeshError
from imesh.v1 import chat_pb2, chat_service_pb2, events_pb2
from router.breaker import BreakerState
from tests.reliability.mesh_fakes import (
    Script,
    collect,
    kinds,
    make_mesh,
    mesh_config,
    text_of,
    unavailable,
    user_input,
)


def tool_delta(index: int, **fields: object) -> events_pb2.ChatEvent:
    return events_pb2.ChatEvent(tool_call=events_pb2.ToolCallDelta(index=index, **fields))  # type: ignore[arg-type]


async def test_stream_is_start_then_deltas_then_one_priced_usage_then_finish() -> None:
    mesh = make_mesh({"dep-a": [Script(tokens=["Hel", "lo"])]})
    events, error = await collect(mesh, user_input("dep-a"), CallContext(request_id="req-1"))
    assert error is None
    assert kinds(events) == ["start", "content", "content", "usage", "finish"]
    start = events[0].start
    assert (start.request_id, start.model, start.deployment) == ("req-1", "dep-a", "dep-a")
    assert (start.provider_model, start.attempt) == ("dep-a-model", 1)
    usage = events[3].usage
    # 10 prompt tokens at $1/M + 2 completion tokens at $2/M = 14 micro-dollars.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cost_micros) == (10, 2, 14)
    assert not usage.estimated
    assert events[4].finish.reason == events_pb2.FINISH_REASON_STOP


async def test_a_new_request_id_is_made_when_the_caller_gives_none() -> None:
    mesh = make_mesh({})
    first, _ = await collect(mesh, user_input("dep-a"))
    second, _ = await collect(mesh, user_input("dep-a"))
    assert len(first[0].start.request_id) == 32
    assert first[0].start.request_id != second[0].start.request_id


async def test_an_empty_completion_still_gets_start_before_usage_and_finish() -> None:
    mesh = make_mesh({"dep-a": [Script(tokens=[])]})
    events, error = await collect(mesh, user_input("dep-a"))
    assert error is None
    assert kinds(events) == ["start", "usage", "finish"]


async def test_missing_backend_usage_is_estimated_and_priced() -> None:
    mesh = make_mesh({"dep-a": [Script(tokens=["abcd", "efgh"], report_usage=False)]})
    events, _ = await collect(mesh, user_input("dep-a"))
    usage = events[-2].usage
    assert usage.estimated
    assert usage.completion_tokens == 2  # 8 characters, ~4 per token
    assert usage.prompt_tokens > 0
    assert usage.cost_micros == usage.prompt_tokens + 2 * usage.completion_tokens


async def test_chat_aggregates_text_tool_calls_usage_and_finish() -> None:
    tail = [
        tool_delta(0, id="call_1", name="get_weather", arguments_delta='{"city":'),
        tool_delta(1, id="call_2", name="get_time", arguments_delta="{}"),
        tool_delta(0, arguments_delta=' "Paris"}'),
    ]
    script = Script(
        tokens=["Let me ", "check."], tail=tail, finish=events_pb2.FINISH_REASON_TOOL_CALLS
    )
    mesh = make_mesh({"dep-a": [script]})
    response = await mesh.router.chat(user_input("dep-a"), CallContext(request_id="r"))
    assert response.request_id == "r"
    assert response.deployment == "dep-a"
    assert response.provider_model == "dep-a-model"
    assert response.message.role == chat_pb2.ROLE_ASSISTANT
    assert [p.text for p in response.message.content] == ["Let me check."]
    calls = [(c.id, c.name, c.arguments_json) for c in response.message.tool_calls]
    assert calls == [("call_1", "get_weather", '{"city": "Paris"}'), ("call_2", "get_time", "{}")]
    assert response.finish_reason == events_pb2.FINISH_REASON_TOOL_CALLS
    assert response.usage.cost_micros == 14


async def test_chat_raises_the_stream_error() -> None:
    mesh = make_mesh({"dep-a": [Script(tokens=["a", "b"], fail_at=1, error=unavailable())]})
    with pytest.raises(MeshError) as caught:
        await mesh.router.chat(user_input("dep-a"), CallContext())
    assert caught.value.reason == "UPSTREAM_INTERRUPTED"


async def test_unknown_model_is_not_found() -> None:
    mesh = make_mesh({})
    _, error = await collect(mesh, user_input("no-such-model"))
    assert isinstance(error, MeshError)
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert mesh.calls() == []


async def test_bad_request_is_refused_before_planning() -> None:
    mesh = make_mesh({})
    request = user_input("no-such-model", temperature=3)
    _, error = await collect(mesh, request)
    assert isinstance(error, MeshError)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations[0].field == "input.temperature"


async def test_list_models_shows_aliases_deployments_prices_and_breakers() -> None:
    mesh = make_mesh(
        {"dep-b": [Script(fail_at=0, error=unavailable())]},
        aliases={"duo": {"candidates": ["dep-a", "dep-b"], "policy": "lowest_cost"}},
        router={"breaker": {"consecutive_failures": 1}},
    )
    await collect(mesh, user_input("dep-b"))
    models = await mesh.router.list_models(CallContext())
    assert [(a.name, list(a.candidates), a.policy) for a in models.aliases] == [
        ("duo", ["dep-a", "dep-b"], "lowest_cost")
    ]
    by_name = {d.name: d for d in models.deployments}
    assert set(by_name) == {"dep-a", "dep-b", "dep-c"}
    a = by_name["dep-a"]
    assert (a.provider, a.provider_model) == ("p-a", "dep-a-model")
    assert list(a.capabilities) == [chat_pb2.CAPABILITY_STREAMING]
    assert a.price == chat_service_pb2.Price(
        input_micros_per_mtok=1_000_000,
        output_micros_per_mtok=2_000_000,
        cached_input_micros_per_mtok=1_000_000,
    )
    assert a.breaker_state == chat_service_pb2.BREAKER_STATE_CLOSED
    assert by_name["dep-b"].breaker_state == chat_service_pb2.BREAKER_STATE_OPEN


async def test_ready_while_some_deployment_breaker_is_closed() -> None:
    mesh = make_mesh(
        {d: [Script(fail_at=0, error=unavailable())] for d in ("dep-a", "dep-b", "dep-c")},
        router={"breaker": {"consecutive_failures": 1}},
    )
    assert await mesh.router.ready()
    for name in ("dep-a", "dep-b"):
        await collect(mesh, user_input(name))
    assert await mesh.router.ready()
    await collect(mesh, user_input("dep-c"))
    assert all(b.state is BreakerState.OPEN for b in mesh.router.breakers.values())
    assert not await mesh.router.ready()


def test_router_refuses_a_config_whose_providers_have_no_backend() -> None:
    from router.service import ChatRouter

    with pytest.raises(ValueError, match="p-a"):
        ChatRouter(mesh_config(), {})


async def test_aclose_closes_every_backend() -> None:
    mesh = make_mesh({})
    closed: list[str] = []
    for name, backend in mesh.backends.items():

        async def aclose(name: str = name) -> None:
            closed.append(name)

        backend.aclose = aclose  # type: ignore[method-assign]
    await mesh.router.aclose()
    assert sorted(closed) == ["p-a", "p-b", "p-c"]


async def test_text_of_a_successful_stream_is_exactly_the_backend_tokens() -> None:
    mesh = make_mesh({"dep-a": [Script(tokens=["x", "y", "z"])]})
    events, _ = await collect(mesh, user_input("dep-a"))
    assert text_of(events) == "xyz"


async def test_aclose_closes_every_backend_even_when_one_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mesh = make_mesh({})
    closed: list[str] = []

    def closer(name: str, fail: bool) -> Any:
        async def aclose() -> None:
            closed.append(name)
            if fail:
                raise RuntimeError("socket already gone")

        return aclose

    for i, (name, backend) in enumerate(mesh.router._backends.items()):
        backend.aclose = closer(name, fail=i == 0)  # type: ignore[method-assign]
    await mesh.router.aclose()
    assert closed == list(mesh.router._backends)
    assert "closing the backend of provider" in caplog.text


async def test_chat_folds_the_answer_without_an_async_generator_of_the_router() -> None:
    # Every async generator costs asyncio a registration: the unary path runs the stages
    # in plain coroutines. (The streaming path, for contrast, is one.)
    mesh = make_mesh({"dep-a": [Script(tokens=["a", "b"])], "dep-b": [Script(tokens=["c"])]})
    started: list[str] = []
    hooks = sys.get_asyncgen_hooks()

    def firstiter(agen: AsyncGenerator[object, None]) -> None:
        started.append(agen.ag_code.co_qualname)  # type: ignore[attr-defined]
        if hooks.firstiter is not None:
            hooks.firstiter(agen)

    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=hooks.finalizer)
    try:
        response = await mesh.router.chat(user_input("dep-a"), CallContext())
        unary = [name for name in started if name.startswith("ChatRouter.")]
        started.clear()
        events, _ = await collect(mesh, user_input("dep-b"))
        streamed = [name for name in started if name.startswith("ChatRouter.")]
    finally:
        sys.set_asyncgen_hooks(*hooks)
    assert [p.text for p in response.message.content] == ["ab"]
    assert unary == []
    assert "ChatRouter._batches" in streamed
    assert kinds(events)[0] == "start"
