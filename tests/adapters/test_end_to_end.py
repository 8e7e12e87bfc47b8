"""Real adapters behind the real router, edge and adapter service, against fake providers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import openai
import pytest

from adapters.anthropic_messages import AnthropicMessagesBackend
from adapters.config import AnthropicConfig, RemoteConfig
from adapters.registry import build_backends
from adapters.remote import RemoteBackend
from adapters.service import start_adapter_server
from gateway.server import start_gateway
from imesh.api import CallContext
from imesh.errors import MeshError
from imesh.v1 import chat_pb2, chat_service_pb2, events_pb2
from router.config import MeshConfig, parse_config
from router.service import ChatRouter
from tests.adapters.fakes.helpers import (
    SECRET_KEY,
    collect,
    generate,
    message,
    parsed_arguments,
    text_of,
    tool_calls,
    usages,
)
from tests.adapters.fakes.server import FakeProvider, Reply, running_fake
from tests.support.hop import adapter_security, service_token

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    },
}


@pytest.fixture
async def anthropic_fake() -> AsyncIterator[FakeProvider]:
    async with running_fake() as server:
        yield server


@pytest.fixture
async def openai_fake() -> AsyncIterator[FakeProvider]:
    async with running_fake() as server:
        yield server


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2E_ANTHROPIC_KEY", SECRET_KEY)
    monkeypatch.setenv("E2E_OPENAI_KEY", SECRET_KEY)


def mesh(anthropic_url: str, openai_url: str | None = None, **breaker: Any) -> MeshConfig:
    timeouts = {"connect": 2, "read": 5, "first_byte": 5}
    providers: dict[str, Any] = {
        "claude": {
            "kind": "anthropic",
            "base_url": anthropic_url,
            "api_key": "env:E2E_ANTHROPIC_KEY",
            "http2": False,
            "timeouts": timeouts,
        }
    }
    deployments = [
        {
            "name": "claude-d",
            "provider": "claude",
            "model": "claude-sonnet-4-5-20250929",
            "capabilities": ["streaming", "tools"],
            "price": {"input": 3.0, "output": 15.0, "cached_input": 0.3},
        }
    ]
    candidates = ["claude-d"]
    if openai_url is not None:
        providers["gpt"] = {
            "kind": "openai",
            "base_url": openai_url,
            "api_key": "env:E2E_OPENAI_KEY",
            "http2": False,
            "timeouts": timeouts,
        }
        deployments.insert(
            0,
            {
                "name": "gpt-d",
                "provider": "gpt",
                "model": "gpt-4o-mini",
                "capabilities": ["streaming", "tools"],
                "price": {"input": 0.15, "output": 0.6},
            },
        )
        candidates.insert(0, "gpt-d")
    return parse_config(
        {
            "providers": providers,
            "deployments": deployments,
            "aliases": {
                "smart": {
                    "candidates": candidates,
                    "policy": "priority",
                    "retry": {"max_attempts": 2, "backoff_base_ms": 0, "backoff_max_ms": 0},
                }
            },
            "router": {"breaker": {"consecutive_failures": 2, "open_s": 60, **breaker}},
        }
    )


async def test_openai_sdk_through_the_edge_and_router_gets_anthropic_tool_calls_and_usage(
    anthropic_fake: FakeProvider,
) -> None:
    # The unary call is answered by one non-streaming call (GenerateRequest.whole).
    anthropic_fake.enqueue(
        Reply.cassette("anthropic/stream_tool_use"), Reply.cassette("anthropic/message_tool_use")
    )
    config = mesh(anthropic_fake.base_url)
    router = ChatRouter(config, build_backends(config.providers))
    edge = await start_gateway(router, config.gateway, "127.0.0.1:0")
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{edge.port}/v1", api_key="caller-key", max_retries=0
    )
    try:
        stream = await client.chat.completions.create(
            model="smart",
            messages=[{"role": "user", "content": "Weather in San Francisco?"}],
            tools=[WEATHER_TOOL],
            stream=True,
            stream_options={"include_usage": True},
        )
        arguments: dict[int, str] = {}
        names: dict[int, str] = {}
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or ():
                    if call.function and call.function.name:
                        names[call.index] = call.function.name
                    if call.function and call.function.arguments:
                        arguments[call.index] = (
                            arguments.get(call.index, "") + call.function.arguments
                        )
        unary = await client.chat.completions.create(
            model="smart",
            messages=[{"role": "user", "content": "Weather in San Francisco?"}],
            tools=[WEATHER_TOOL],
        )
    finally:
        await client.close()
        await edge.stop()
        await router.aclose()
    assert names == {0: "get_weather"}
    assert json.loads(arguments[0]) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (472 + 2048 + 120, 89)
    unary_calls: Any = unary.choices[0].message.tool_calls
    unary_call = unary_calls[0]
    assert json.loads(unary_call.function.arguments) == {
        "location": "San Francisco, CA",
        "unit": "fahrenheit",
    }
    assert unary.choices[0].finish_reason == "tool_calls"
    assert unary.usage is not None
    assert unary.usage.completion_tokens == 89
    sent = anthropic_fake.requests[0]
    assert sent.json()["stream"] is True
    assert "stream" not in anthropic_fake.requests[1].json()
    assert sent.headers["x-api-key"] == SECRET_KEY
    assert sent.json()["tools"][0]["input_schema"] == WEATHER_TOOL["function"]["parameters"]


async def test_router_falls_back_from_failing_openai_to_anthropic_and_opens_the_breaker(
    anthropic_fake: FakeProvider, openai_fake: FakeProvider
) -> None:
    openai_fake.enqueue(*[Reply.cassette("openai/error_503")] * 2)
    anthropic_fake.enqueue(*[Reply.cassette("anthropic/message_text")] * 3)
    config = mesh(anthropic_fake.base_url, f"{openai_fake.base_url}/v1")
    router = ChatRouter(config, build_backends(config.providers))
    ctx = CallContext()
    try:
        answers = [
            await router.chat(chat_pb2.ChatInput(model="smart", messages=[_hello()]), ctx)
            for _ in range(3)
        ]
        models = await router.list_models(ctx)
    finally:
        await router.aclose()
    for answer in answers:
        assert answer.deployment == "claude-d"
        assert answer.usage.prompt_tokens == 25
    # Two 503s opened gpt-d's breaker; the third call went straight to Anthropic.
    assert len(openai_fake.requests) == 2
    assert len(anthropic_fake.requests) == 3
    states = {d.name: d.breaker_state for d in models.deployments}
    assert states["gpt-d"] == chat_service_pb2.BREAKER_STATE_OPEN
    assert states["claude-d"] == chat_service_pb2.BREAKER_STATE_CLOSED


async def test_anthropic_adapter_served_over_grpc_behaves_like_in_process(
    anthropic_fake: FakeProvider,
) -> None:
    anthropic_fake.enqueue(
        Reply.cassette("anthropic/stream_tool_use"),
        Reply.cassette("anthropic/error_429"),
        Reply.cassette("anthropic/stream_overloaded_after_output"),
    )
    backend = AnthropicMessagesBackend(
        AnthropicConfig.model_validate(
            {
                "kind": "anthropic",
                "base_url": anthropic_fake.base_url,
                "api_key": "env:E2E_ANTHROPIC_KEY",
                "http2": False,
            }
        )
    )
    server = await start_adapter_server(backend, "127.0.0.1:0", adapter_security())
    address = f"127.0.0.1:{server.port}"
    remote = RemoteBackend(RemoteConfig(kind="remote", address=address, token=service_token()))
    try:
        events, error = await collect(remote, generate())
        _, limited = await collect(remote, generate())
        cut_events, cut = await collect(remote, generate())
    finally:
        await remote.aclose()
        await server.stop(0)
        await backend.aclose()
    assert error is None
    assert tool_calls(events)[0]["name"] == "get_weather"
    assert parsed_arguments(events)[0] == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert usages(events) == [
        events_pb2.Usage(prompt_tokens=2640, completion_tokens=89, cached_tokens=2048)
    ]
    assert isinstance(limited, MeshError)
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.reason == "UPSTREAM_RATE_LIMITED"
    assert limited.retry_after == pytest.approx(17.0)
    assert text_of(cut_events) == "The first three prime numbers are"
    assert usages(cut_events)[-1].estimated
    assert isinstance(cut, MeshError)
    assert cut.reason == "UPSTREAM_INTERRUPTED"


def _hello() -> chat_pb2.Message:
    return message(chat_pb2.ROLE_USER, "Hello")
