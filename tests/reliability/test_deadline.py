"""Deadlines: the caller's bounds everything; first-token and attempt timeouts fail an attempt."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from imesh.api import CallContext
from imesh.errors import MeshError, Reason
from imesh.v1 import adapter_service_pb2, events_pb2
from router.breaker import BreakerState
from router.recorder import Outcome
from router.service import ChatRouter
from tests.reliability.mesh_fakes import (
    Script,
    ScriptedBackend,
    collect,
    kinds,
    make_mesh,
    mesh_config,
    other_tasks,
    text_of,
    user_input,
)

DUO = {"duo": {"candidates": ["dep-a", "dep-b"], "policy": "priority"}}
# How late an ending may come on a loaded 2-core machine (timers, task switches). What these
# tests tell apart is ending at a deadline or timeout from running on to something seconds
# away (the scripted backend's first token, a longer timeout, a backoff), so the slack is
# honest rather than tight, and each test keeps that alternative well beyond it.
SLACK_S = 1.0


async def test_deadline_before_the_first_token_raises_deadline_exceeded_in_time() -> None:
    mesh = make_mesh({"dep-a": [Script(ttft=10.0)], "dep-b": [Script(ttft=10.0)]}, aliases=DUO)
    started = time.monotonic()
    events, error = await collect(mesh, user_input("duo"), CallContext(timeout=0.2))
    elapsed = time.monotonic() - started
    assert events == []
    assert isinstance(error, MeshError)
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.reason is Reason.CALLER_DEADLINE
    assert 0.2 <= elapsed < 0.2 + SLACK_S
    # The upstream call was closed, not left running past the caller's deadline.
    [call] = mesh.calls()
    assert call.cancelled
    assert call.closed_at is not None
    assert call.closed_at - started < 0.2 + SLACK_S
    assert other_tasks() == []


async def test_first_token_timeout_fails_the_attempt_and_falls_back() -> None:
    mesh = make_mesh(
        {"dep-a": [Script(ttft=10.0)], "dep-b": [Script(tokens=["b"])]},
        aliases=DUO,
        router={"timeouts": {"first_token": 0.1, "attempt": 5, "request": 10}},
    )
    started = time.monotonic()
    events, error = await collect(mesh, user_input("duo"))
    assert error is None
    assert text_of(events) == "b"
    assert time.monotonic() - started < 0.1 + SLACK_S
    [timed_out] = mesh.sink.by_deployment("dep-a")
    assert timed_out.outcome is Outcome.FAILURE
    assert timed_out.error is not None
    assert timed_out.error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert timed_out.error.reason == "FIRST_TOKEN_TIMEOUT"


async def test_attempt_timeout_after_output_ends_the_stream_with_an_error_event() -> None:
    mesh = make_mesh(
        {"dep-a": [Script(tokens=["a", "b", "c"], stall_at=1)]},
        aliases=DUO,
        router={"timeouts": {"first_token": 0.1, "attempt": 0.2, "request": 2}},
    )
    events, error = await collect(mesh, user_input("duo"))
    assert kinds(events) == ["start", "content", "error"]
    assert isinstance(error, MeshError)
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.reason == "UPSTREAM_INTERRUPTED"
    assert error.metadata["upstream_reason"] == "ATTEMPT_TIMEOUT"
    assert len(mesh.calls()) == 1  # after output, never a retry


async def test_caller_deadline_after_output_ends_with_deadline_exceeded() -> None:
    mesh = make_mesh({"dep-a": [Script(tokens=["a", "b"], stall_at=1)]}, aliases=DUO)
    started = time.monotonic()
    events, error = await collect(mesh, user_input("duo"), CallContext(timeout=0.15))
    assert time.monotonic() - started < 0.15 + SLACK_S
    assert kinds(events) == ["start", "content", "error"]
    assert events[-1].error.reason == Reason.CALLER_DEADLINE
    assert events[-1].error.partial_usage.estimated
    assert events[-1].error.partial_usage.cost_micros > 0
    assert isinstance(error, MeshError)
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.reason is Reason.CALLER_DEADLINE
    assert mesh.calls()[0].closed_at is not None


async def test_no_retry_starts_when_the_backoff_would_outlast_the_deadline() -> None:
    from tests.reliability.mesh_fakes import MaxJitter, unavailable

    mesh = make_mesh(
        {"dep-a": [Script(fail_at=0, error=unavailable())]},
        aliases={
            "solo": {
                "candidates": ["dep-a"],
                "retry": {"max_attempts": 5, "backoff_base_ms": 5000, "backoff_max_ms": 5000},
            }
        },
        rng=MaxJitter(),
    )
    started = time.monotonic()
    _, error = await collect(mesh, user_input("solo"), CallContext(timeout=3.0))
    assert time.monotonic() - started < SLACK_S  # not sleeping on until the deadline
    assert isinstance(error, MeshError)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert len(mesh.calls()) == 1


class _NoticesTheDeadlineItself(Backend):
    """Sends one token, then reports the deadline as its own UPSTREAM_TIMEOUT before the
    router's timer can run (it blocks the loop until the deadline has passed)."""

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        assert deadline.bounded
        yield [events_pb2.ChatEvent(content=events_pb2.ContentDelta(text="a"))]
        time.sleep(deadline.remaining() + 0.01)  # noqa: ASYNC251
        raise MeshError.of(Reason.UPSTREAM_TIMEOUT, "deadline passed")


async def test_callers_deadline_is_no_verdict_on_the_deployment() -> None:
    one_strike = {"breaker": {"consecutive_failures": 1}}
    # After output: the router's timer ends the attempt at the caller's deadline.
    mesh = make_mesh(
        {"dep-a": [Script(tokens=["a", "b"], stall_at=1)]}, aliases=DUO, router=one_strike
    )
    _, error = await collect(mesh, user_input("duo"), CallContext(timeout=0.1))
    assert isinstance(error, MeshError)
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert mesh.router.breakers["dep-a"].state is BreakerState.CLOSED

    # The adapter noticing the same deadline first is no verdict either.
    backends = {
        "p-a": _NoticesTheDeadlineItself(),
        "p-b": ScriptedBackend(),
        "p-c": ScriptedBackend(),
    }
    router = ChatRouter(mesh_config(DUO, one_strike), backends)
    with pytest.raises(MeshError) as info:
        await router.chat(user_input("duo"), CallContext(timeout=0.1))
    assert info.value.reason is Reason.CALLER_DEADLINE
    assert router.breakers["dep-a"].state is BreakerState.CLOSED

    # The router's own first-token timeout does judge the deployment.
    mesh = make_mesh(
        {"dep-a": [Script(ttft=5.0)], "dep-b": [Script(tokens=["b"])]},
        aliases=DUO,
        router={**one_strike, "timeouts": {"first_token": 0.05, "attempt": 1, "request": 2}},
    )
    _, error = await collect(mesh, user_input("duo"), CallContext(timeout=1.0))
    assert error is None
    assert mesh.router.breakers["dep-a"].state is BreakerState.OPEN
