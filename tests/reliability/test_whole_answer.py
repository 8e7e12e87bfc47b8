"""A unary caller's answer comes from one non-streaming upstream call (GenerateRequest.whole),
and retries, fallback, timeouts, cancellation and usage behave as for a stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.registry import build_backends
from imesh.api import CallContext
from imesh.errors import MeshError, Reason
from imesh.v1 import chat_pb2, events_pb2
from router.config import MeshConfig, parse_config
from router.recorder import AttemptRecord, Outcome, RequestRecord
from router.service import ChatRouter
from tests.adapters.fakes.helpers import message
from tests.adapters.fakes.server import FakeProvider, Reply, running_fake

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
}
WHOLE = Reply(headers=(("content-type", "application/json"),), body=json.dumps(COMPLETION).encode())
STREAM = Reply.cassette("openai/stream_text")
UNAVAILABLE = Reply.cassette("openai/error_503")


class Sink:
    def __init__(self) -> None:
        self.attempts: list[AttemptRecord] = []
        self.requests: list[RequestRecord] = []

    def record_attempt(self, record: AttemptRecord) -> None:
        self.attempts.append(record)

    def record_request(self, record: RequestRecord) -> None:
        self.requests.append(record)


@pytest.fixture
async def first() -> AsyncIterator[FakeProvider]:
    async with running_fake() as server:
        yield server


@pytest.fixture
async def second() -> AsyncIterator[FakeProvider]:
    async with running_fake() as server:
        yield server


def config(
    *urls: str,
    max_attempts: int = 1,
    hedging: bool = False,
    timeouts: dict[str, float] | None = None,
) -> MeshConfig:
    providers = {
        f"p{i}": {
            "kind": "openai_compatible",
            "base_url": url,
            "http2": False,
            "timeouts": {"connect": 2, "read": 5, "first_byte": 5},
        }
        for i, url in enumerate(urls)
    }
    deployments = [{"name": f"d{i}", "provider": f"p{i}", "model": "m"} for i in range(len(urls))]
    alias: dict[str, Any] = {
        "candidates": [d["name"] for d in deployments],
        "retry": {"max_attempts": max_attempts, "backoff_base_ms": 0, "backoff_max_ms": 0},
    }
    if hedging:
        alias["hedging"] = {"enabled": True, "delay_ms": 5000}
    router: dict[str, Any] = {"breaker": {"consecutive_failures": 10}}
    if timeouts is not None:
        router["timeouts"] = timeouts
    return parse_config(
        {
            "providers": providers,
            "deployments": deployments,
            "aliases": {"alias": alias},
            "router": router,
        }
    )


def build(mesh: MeshConfig, sink: Sink | None = None) -> ChatRouter:
    return ChatRouter(mesh, build_backends(mesh.providers), sinks=[sink] if sink else [])


def chat_input() -> chat_pb2.ChatInput:
    return chat_pb2.ChatInput(model="alias", messages=[message(chat_pb2.ROLE_USER, "Hi")])


def streamed(fake: FakeProvider, index: int = 0) -> bool:
    return bool(fake.requests[index].json().get("stream"))


async def test_a_unary_caller_is_answered_from_one_non_streaming_upstream_call(
    first: FakeProvider,
) -> None:
    first.enqueue(WHOLE)
    sink = Sink()
    router = build(config(first.base_url), sink)
    try:
        response = await router.chat(chat_input(), CallContext())
    finally:
        await router.aclose()
    assert len(first.requests) == 1
    assert not streamed(first)
    assert "stream_options" not in first.requests[0].json()
    assert first.requests[0].headers.get("accept") != "text/event-stream"
    assert response.message.content[0].text == "Hello!"
    assert response.finish_reason == events_pb2.FINISH_REASON_STOP
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (11, 2)
    assert not response.usage.estimated
    # Usage recorded as for a stream; a whole answer has no time to first token.
    [attempt] = sink.attempts
    assert attempt.outcome is Outcome.SUCCESS
    assert (attempt.usage.prompt_tokens, attempt.usage.completion_tokens) == (11, 2)
    assert attempt.ttft_s is None
    [request] = sink.requests
    assert (request.usage.prompt_tokens, request.usage.completion_tokens) == (11, 2)
    assert request.ttft_s is None


async def test_a_streaming_caller_still_streams_upstream(first: FakeProvider) -> None:
    first.enqueue(STREAM)
    router = build(config(first.base_url))
    try:
        events = [e async for e in router.chat_stream(chat_input(), CallContext())]
    finally:
        await router.aclose()
    assert streamed(first)
    assert "".join(e.content.text for e in events if e.HasField("content")) == "Hello there!"


async def test_a_failed_whole_answer_falls_back_to_the_next_deployment(
    first: FakeProvider, second: FakeProvider
) -> None:
    first.enqueue(UNAVAILABLE)
    second.enqueue(WHOLE)
    sink = Sink()
    router = build(config(first.base_url, second.base_url, max_attempts=2), sink)
    try:
        response = await router.chat(chat_input(), CallContext())
    finally:
        await router.aclose()
    assert not streamed(first)
    assert not streamed(second)
    assert response.deployment == "d1"
    assert response.message.content[0].text == "Hello!"
    assert [(a.deployment, a.outcome) for a in sink.attempts] == [
        ("d0", Outcome.FAILURE),
        ("d1", Outcome.SUCCESS),
    ]
    assert sink.requests[0].fallbacks == 1
    assert sink.requests[0].usage.completion_tokens == 2


async def test_a_failed_whole_answer_is_retried_on_the_same_deployment(
    first: FakeProvider,
) -> None:
    first.enqueue(UNAVAILABLE, WHOLE)
    sink = Sink()
    router = build(config(first.base_url, max_attempts=2), sink)
    try:
        response = await router.chat(chat_input(), CallContext())
    finally:
        await router.aclose()
    assert [streamed(first, i) for i in range(2)] == [False, False]
    assert response.message.content[0].text == "Hello!"
    assert sink.requests[0].retries == 1


async def test_a_hedged_request_streams_even_for_a_unary_caller(first: FakeProvider) -> None:
    # A hedge delay is a first token's p95: a whole answer would nearly always exceed it.
    first.enqueue(STREAM)
    router = build(config(first.base_url, hedging=True))
    try:
        response = await router.chat(chat_input(), CallContext())
    finally:
        await router.aclose()
    assert streamed(first)
    assert response.message.content[0].text == "Hello there!"


async def test_the_attempt_timeout_bounds_a_whole_answer_not_the_first_token_timeout(
    first: FakeProvider,
) -> None:
    first.enqueue(Reply(stall_before_headers=True))
    timeouts = {"request": 5, "attempt": 0.6, "first_token": 0.1}
    router = build(config(first.base_url, timeouts=timeouts))
    t0 = time.monotonic()
    try:
        with pytest.raises(MeshError) as caught:
            await router.chat(chat_input(), CallContext())
    finally:
        await router.aclose()
    assert time.monotonic() - t0 >= 0.6
    assert caught.value.reason is Reason.ALL_ATTEMPTS_FAILED
    assert Reason.ATTEMPT_TIMEOUT.value in caught.value.metadata["attempt_1"]


async def test_cancelling_a_unary_call_closes_the_upstream_call_at_once(
    first: FakeProvider,
) -> None:
    first.enqueue(Reply(stall_before_headers=True))
    sink = Sink()
    router = build(config(first.base_url), sink)
    try:
        call = asyncio.create_task(router.chat(chat_input(), CallContext()))
        for _ in range(200):  # the fake has no event for a request's arrival: poll
            if first.requests:
                break
            await asyncio.sleep(0.01)
        cancelled_at = time.monotonic()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(first.disconnected.wait(), 2)
    finally:
        await router.aclose()
    assert first.disconnected_at is not None
    assert first.disconnected_at - cancelled_at < 0.1
    assert not streamed(first)
    assert [a.outcome for a in sink.attempts] == [Outcome.CANCELLED]
