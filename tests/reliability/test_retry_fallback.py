"""Retry, backoff, fallback order, 429 cool-down, breaker fail-fast: only before the first token."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from adapters.backend import Batch
from adapters.deadline import Deadline
from imesh.api import CallContext
from imesh.errors import MeshError, Reason, classify
from router.breaker import BreakerState
from router.config import RetryConfig
from router.recorder import Outcome
from router.retry import backoff_s
from router.service import ChatRouter
from tests.reliability.mesh_fakes import (
    MaxJitter,
    Mesh,
    RecordCollector,
    Script,
    ScriptedBackend,
    collect,
    kinds,
    make_mesh,
    mesh_config,
    rate_limited,
    text_of,
    unavailable,
    user_input,
)

SINGLE = {"solo": {"candidates": ["dep-a"], "retry": {"max_attempts": 3}}}
TRIO = {"trio": {"candidates": ["dep-a", "dep-b", "dep-c"], "policy": "priority"}}


async def test_retries_unavailable_with_backoff_then_succeeds() -> None:
    retry = {"max_attempts": 3, "backoff_base_ms": 40, "backoff_max_ms": 1000}
    mesh = make_mesh(
        {
            "dep-a": [
                Script(fail_at=0, error=unavailable()),
                Script(fail_at=0, error=unavailable()),
                Script(tokens=["ok"]),
            ]
        },
        aliases={"solo": {"candidates": ["dep-a"], "retry": retry}},
        rng=MaxJitter(),
    )
    events, error = await collect(mesh, user_input("solo"))
    assert error is None
    assert kinds(events) == ["start", "content", "usage", "finish"]
    assert events[0].start.attempt == 3
    starts = [c.started_at for c in mesh.calls()]
    assert len(starts) == 3
    # Full jitter at its top: 40 ms before the first retry, 80 ms before the second.
    assert starts[1] - starts[0] >= 0.040
    assert starts[2] - starts[1] >= 0.080
    outcomes = [r.outcome for r in mesh.sink.records]
    assert outcomes == [Outcome.FAILURE, Outcome.FAILURE, Outcome.SUCCESS]


def test_backoff_is_full_jitter_capped_at_the_maximum() -> None:
    retry = RetryConfig(backoff_base_ms=10, backoff_max_ms=100)
    rng = random.Random(3)
    for n, cap in [(0, 0.010), (1, 0.020), (2, 0.040), (3, 0.080), (4, 0.100), (9, 0.100)]:
        samples = [backoff_s(retry, n, rng) for _ in range(200)]
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) > cap * 0.8  # spread over the whole range, not a fixed wait
        assert min(samples) < cap * 0.2
    assert backoff_s(retry, 40, MaxJitter()) == pytest.approx(0.100)


async def test_no_retry_after_the_first_token_reached_the_caller() -> None:
    mesh = make_mesh(
        {"dep-a": [Script(tokens=["a", "b", "c"], fail_at=2, error=unavailable("cut"))]},
        aliases=SINGLE,
    )
    events, error = await collect(mesh, user_input("solo"))
    assert kinds(events) == ["start", "content", "content", "error"]
    assert text_of(events) == "ab"
    assert isinstance(error, MeshError)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.reason == "UPSTREAM_INTERRUPTED"
    stream_error = events[-1].error
    assert stream_error.reason == "UPSTREAM_INTERRUPTED"
    assert stream_error.deployment == "dep-a"
    # The backend's partial usage, priced: 10 prompt x 1 + 2 completion x 2 micro-dollars.
    assert stream_error.partial_usage.completion_tokens == 2
    assert stream_error.partial_usage.cost_micros == 14
    assert error.usage is not None
    assert error.usage.cost_micros == 14
    assert len(mesh.calls()) == 1


async def test_fallback_walks_the_ranked_candidates_in_plan_order() -> None:
    mesh = make_mesh(
        {
            "dep-c": [Script(fail_at=0, error=unavailable())],
            "dep-a": [Script(fail_at=0, error=unavailable())],
            "dep-b": [Script(tokens=["from-b"])],
        },
        aliases={"trio": {"candidates": ["dep-c", "dep-a", "dep-b"], "policy": "priority"}},
    )
    events, error = await collect(mesh, user_input("trio"))
    assert error is None
    assert [c.deployment for c in mesh.calls()] == ["dep-c", "dep-a", "dep-b"]
    assert events[0].start.deployment == "dep-b"
    assert events[0].start.attempt == 3
    assert text_of(events) == "from-b"


async def test_all_attempts_failing_keeps_every_error_in_the_final_one() -> None:
    mesh = make_mesh(
        {d: [Script(fail_at=0, error=unavailable(f"{d} is down"))] for d in ("dep-a", "dep-b")}
        | {"dep-c": [Script(fail_at=0, error=rate_limited(5))]},
        aliases=TRIO,
    )
    events, error = await collect(mesh, user_input("trio"))
    assert events == []
    assert isinstance(error, MeshError)
    assert error.reason == "ALL_ATTEMPTS_FAILED"
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED  # the last attempt's code
    assert error.retry_after == 5
    assert "dep-a is down" in error.message
    assert "dep-b is down" in error.message
    assert "slow down" in error.message
    assert error.metadata["attempts"] == "3"
    assert "dep-a" in error.metadata["attempt_1"]
    assert "dep-c" in error.metadata["attempt_3"]


async def test_invalid_argument_from_a_provider_returns_to_the_caller_at_once() -> None:
    bad = MeshError.of(Reason.UPSTREAM_BAD_REQUEST, "bad schema")
    mesh = make_mesh({"dep-a": [Script(fail_at=0, error=bad)]}, aliases=TRIO)
    _, error = await collect(mesh, user_input("trio"))
    assert isinstance(error, MeshError)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason is Reason.UPSTREAM_BAD_REQUEST
    assert error.metadata["deployment"] == "dep-a"
    assert [c.deployment for c in mesh.calls()] == ["dep-a"]
    assert mesh.router.breakers["dep-a"].state is BreakerState.CLOSED


async def test_permission_denied_falls_back_and_never_retries_that_deployment() -> None:
    denied = MeshError.of(Reason.UPSTREAM_AUTH, "key revoked")
    mesh = make_mesh(
        {
            "dep-a": [Script(fail_at=0, error=denied)],
            "dep-b": [Script(fail_at=0, error=unavailable())],
            "dep-c": [Script(fail_at=0, error=unavailable())],
        },
        aliases={"trio": {**TRIO["trio"], "retry": {"max_attempts": 5, "backoff_base_ms": 1}}},
    )
    _, error = await collect(mesh, user_input("trio"))
    assert isinstance(error, MeshError)
    # Five attempts: a once (excluded after PERMISSION_DENIED), then b, c, b, c.
    assert [c.deployment for c in mesh.calls()] == ["dep-a", "dep-b", "dep-c", "dep-b", "dep-c"]


async def test_rate_limit_cools_the_deployment_without_counting_a_failure() -> None:
    mesh = make_mesh(
        {"dep-a": [Script(fail_at=0, error=rate_limited(30))], "dep-b": [Script(tokens=["b"])]},
        aliases={"duo": {"candidates": ["dep-a", "dep-b"]}},
        router={"breaker": {"consecutive_failures": 1}},
    )
    events, error = await collect(mesh, user_input("duo"))
    assert error is None
    assert events[0].start.deployment == "dep-b"
    breaker = mesh.router.breakers["dep-a"]
    # One failure would have opened it (consecutive_failures: 1); a 429 only cools it.
    assert breaker.state is BreakerState.CLOSED
    assert not breaker.available()
    assert 29 < breaker.retry_after() <= 30
    assert mesh.sink.by_deployment("dep-a")[0].outcome is Outcome.RATE_LIMITED
    # While cooling, the next request goes straight to dep-b.
    await collect(mesh, user_input("duo"))
    assert [c.deployment for c in mesh.calls()] == ["dep-a", "dep-b", "dep-b"]


async def test_every_deployment_cooling_down_is_a_429_naming_the_state_in_words() -> None:
    mesh = make_mesh(
        {
            "dep-a": [Script(fail_at=0, error=rate_limited(3))],
            "dep-b": [Script(fail_at=0, error=rate_limited(1.9))],
        },
        aliases={"duo": {"candidates": ["dep-a", "dep-b"]}},
    )
    _, first = await collect(mesh, user_input("duo"))
    assert isinstance(first, MeshError)
    assert classify(first).http_status == 429  # the last attempt's rate limit
    _, error = await collect(mesh, user_input("duo"))
    assert isinstance(error, MeshError)
    assert error.reason is Reason.ALL_COOLING_DOWN
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert classify(error).http_status == 429
    assert error.retry_after is not None
    assert 1.5 < error.retry_after <= 1.9
    assert error.message.startswith(
        "every deployment of 'duo' is cooling down after a rate limit; the first is back in "
    )
    assert len(mesh.calls()) == 2  # the second request reached no backend


async def test_an_interrupted_stream_error_says_it_once() -> None:
    cut = MeshError.of(Reason.UPSTREAM_INTERRUPTED, "p-a: reset (after output began)")
    mesh = make_mesh({"dep-a": [Script(tokens=["a", "b"], fail_at=1, error=cut)]})
    events, error = await collect(mesh, user_input("dep-a"))
    assert isinstance(error, MeshError)
    assert error.message == "stream interrupted: p-a: reset (after output began)"
    assert events[-1].error.message == error.message
    assert error.metadata["deployment"] == "dep-a"
    # Said already by another hop (a remote adapter, a router in front): not again.
    again = MeshError.of(Reason.UPSTREAM_INTERRUPTED, error.message)
    mesh = make_mesh({"dep-a": [Script(tokens=["a", "b"], fail_at=1, error=again)]})
    _, error = await collect(mesh, user_input("dep-a"))
    assert isinstance(error, MeshError)
    assert error.message == "stream interrupted: p-a: reset (after output began)"
    # A cause of another kind keeps its reason in the metadata.
    mesh = make_mesh({"dep-a": [Script(tokens=["a", "b"], fail_at=1, error=unavailable("gone"))]})
    _, error = await collect(mesh, user_input("dep-a"))
    assert isinstance(error, MeshError)
    assert error.message == "stream interrupted: gone"
    assert error.metadata["upstream_reason"] == "UPSTREAM_UNAVAILABLE"


async def test_breaker_opens_after_failures_and_the_router_fails_fast() -> None:
    mesh = make_mesh(
        {"dep-a": [Script(fail_at=0, error=unavailable())]},
        aliases={"solo": {"candidates": ["dep-a"], "retry": {"max_attempts": 1}}},
        router={"breaker": {"consecutive_failures": 2, "open_s": 60}},
    )
    for _ in range(2):
        _, error = await collect(mesh, user_input("solo"))
        assert isinstance(error, MeshError)
        assert error.reason == "ALL_ATTEMPTS_FAILED"
    assert mesh.router.breakers["dep-a"].state is BreakerState.OPEN
    started = time.monotonic()
    _, error = await collect(mesh, user_input("solo"))
    # Fast: not waiting out the breaker's 60 s nor the request's 300 s timeout. A second
    # leaves a loaded machine its scheduling delays.
    assert time.monotonic() - started < 1.0
    assert isinstance(error, MeshError)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.reason == "ALL_BREAKERS_OPEN"
    assert error.retry_after is not None
    assert error.retry_after > 50
    assert len(mesh.calls()) == 2  # the open breaker kept the third call off the backend


async def test_retries_are_bounded_by_max_attempts() -> None:
    mesh = make_mesh(
        {"dep-a": [Script(fail_at=0, error=unavailable())]},
        aliases={"solo": {"candidates": ["dep-a"], "retry": {"max_attempts": 2}}},
        rng=random.Random(1),
    )
    _, error = await collect(mesh, user_input("solo"))
    assert isinstance(error, MeshError)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert len(mesh.calls()) == 2


class RefusingBackend(ScriptedBackend):
    """A Backend whose `chat` is a plain method that refuses before returning a stream
    (the ABC allows any callable returning an iterator, not only async generators)."""

    def chat(self, request: Any, deadline: Deadline) -> AsyncIterator[Batch]:
        raise unavailable("no channel to the adapter")


async def test_a_backend_refusing_before_it_streams_falls_back_at_once() -> None:
    sink = RecordCollector()
    backends = {"p-a": RefusingBackend(), "p-b": ScriptedBackend(Script(tokens=["b"]))}
    backends["p-c"] = ScriptedBackend()
    mesh = Mesh(ChatRouter(mesh_config(TRIO), backends, sinks=[sink]), backends, sink)
    started = time.monotonic()
    events, error = await collect(mesh, user_input("trio"), CallContext(timeout=2.0))
    assert error is None
    assert events[0].start.deployment == "dep-b"
    assert time.monotonic() - started < 1.0  # not stuck until the deadline
    [refused] = sink.by_deployment("dep-a")
    assert refused.outcome is Outcome.FAILURE
    assert refused.error is not None
    assert refused.error.reason == "UPSTREAM_UNAVAILABLE"
    assert mesh.router.stats["dep-a"].in_flight == 0
