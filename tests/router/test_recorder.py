"""The Recorder: one place per attempt end and per request end; breaker verdicts (from
`classify`), spend and stats agree."""

from __future__ import annotations

import logging

import grpc
import pytest

from adapters.deadline import Deadline
from imesh.errors import MeshError, Reason
from imesh.v1 import events_pb2
from router.attempt import Attempt
from router.breaker import BreakerState, CircuitBreaker
from router.candidate import Candidate
from router.config import BreakerConfig, Deployment, Price, Timeouts
from router.recorder import (
    AttemptKind,
    AttemptRecord,
    Outcome,
    Recorder,
    RequestOutcome,
    RequestRecord,
)
from router.scope import Caller, RequestScope
from router.stats import DeploymentStats
from tests.reliability.mesh_fakes import ScriptedBackend, user_input

UNAVAILABLE = MeshError.of(Reason.UPSTREAM_UNAVAILABLE, "down")
RATE_LIMITED = MeshError.of(Reason.UPSTREAM_RATE_LIMITED, "slow down", retry_after=7.0)


class Sink:
    def __init__(self) -> None:
        self.records: list[AttemptRecord] = []
        self.requests: list[RequestRecord] = []

    def record_attempt(self, record: AttemptRecord) -> None:
        self.records.append(record)

    def record_request(self, record: RequestRecord) -> None:
        self.requests.append(record)


def candidate(consecutive_failures: int = 2) -> Candidate:
    deployment = Deployment(name="d1", provider="p", model="m", price=Price(input=2, output=10))
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=consecutive_failures))
    return Candidate(deployment, breaker, DeploymentStats(), estimated_cost_micros=0)


def new_scope() -> RequestScope:
    return RequestScope("r", Caller(key_id="k1"), user_input("auto"), Deadline.after(10))


def attempt(
    recorder: Recorder,
    c: Candidate,
    scope: RequestScope | None = None,
    *,
    kind: AttemptKind = AttemptKind.PRIMARY,
    usage: events_pb2.Usage | None = None,
    chars: int = 0,
    ttft: float | None = None,
) -> Attempt:
    """An attempt as the executor leaves it at its end (its task is not needed here)."""
    scope = scope or new_scope()
    permit = c.breaker.try_acquire()
    assert permit is not None
    a = Attempt(
        scope,
        c,
        permit,
        ScriptedBackend(),
        kind=kind,
        timeouts=Timeouts(),
        recorder=recorder,
        on_ready=lambda _: None,
    )
    scope.attempts.append(a)
    a.prompt_tokens_estimate = 100
    a.usage = usage
    a.output_chars = chars
    if ttft is not None:
        a.first_output_at = a.started_at + ttft
    recorder.begin(a)
    return a


def finish(
    recorder: Recorder,
    c: Candidate,
    outcome: Outcome,
    error: MeshError | None = None,
    **fields: object,
) -> AttemptRecord:
    a = attempt(recorder, c, **fields)  # type: ignore[arg-type]
    a.record = recorder.finish(a.scope, a, outcome, error, ended_at=a.started_at + 0.5)
    return a.record


async def test_reported_usage_is_priced_in_integer_micros_and_sent_to_sinks() -> None:
    sink = Sink()
    recorder = Recorder([sink])
    c = candidate()
    usage = events_pb2.Usage(prompt_tokens=1000, completion_tokens=500)
    record = finish(recorder, c, Outcome.SUCCESS, usage=usage, chars=10, ttft=0.1)
    # 1000 * $2/M + 500 * $10/M = $0.002 + $0.005
    assert record.cost_micros == 7000
    assert record.usage.estimated is False
    assert (record.request_id, record.caller.key_id, record.kind) == (
        "r",
        "k1",
        AttemptKind.PRIMARY,
    )
    assert record.latency_s == pytest.approx(0.5)
    assert sink.records == [record]
    assert c.stats.in_flight == 0
    assert c.stats.ttft_ewma == pytest.approx(0.1)


async def test_cancelled_attempt_without_usage_still_bills_the_prompt_estimate() -> None:
    record = finish(Recorder(), candidate(), Outcome.CANCELLED, chars=8)
    assert record.usage.estimated is True
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (100, 2)
    assert record.cost_micros == 100 * 2 + 2 * 10


async def test_rate_limited_attempt_cools_down_without_counting_a_failure() -> None:
    c = candidate(consecutive_failures=1)
    finish(Recorder(), c, Outcome.RATE_LIMITED, RATE_LIMITED)
    assert c.breaker.state is BreakerState.CLOSED  # one failure would have opened it
    assert not c.breaker.available()
    assert 6.0 < c.breaker.retry_after() <= 7.0


@pytest.mark.parametrize(
    ("error", "opens"),
    [
        (MeshError.of(Reason.CALLER_DEADLINE, "the caller's deadline passed"), False),
        (MeshError.of(Reason.OVERLOADED, "pool full"), False),
        (MeshError.of(Reason.UPSTREAM_BAD_REQUEST, "bad schema"), False),
        # A bare remote DEADLINE_EXCEEDED is the remote side's timeout: a verdict.
        (MeshError(grpc.StatusCode.DEADLINE_EXCEEDED, Reason.UNSPECIFIED, "timeout"), True),
        (MeshError.of(Reason.FIRST_TOKEN_TIMEOUT, "silent"), True),
    ],
)
async def test_the_verdict_on_the_deployment_comes_from_classify(
    error: MeshError, opens: bool
) -> None:
    c = candidate(consecutive_failures=1)
    finish(Recorder(), c, Outcome.FAILURE, error)
    assert (c.breaker.state is BreakerState.OPEN) is opens


async def test_breaker_opening_is_logged_once_naming_the_deployment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    c = candidate(consecutive_failures=2)
    with caplog.at_level(logging.INFO, logger="router.recorder"):
        finish(recorder, c, Outcome.FAILURE, UNAVAILABLE)
        assert not caplog.records  # still closed: nothing to say
        finish(recorder, c, Outcome.FAILURE, UNAVAILABLE)
    assert c.breaker.state is BreakerState.OPEN
    (entry,) = caplog.records
    assert entry.levelno == logging.WARNING
    assert entry.getMessage() == "deployment d1: breaker closed -> open (UPSTREAM_UNAVAILABLE)"


async def test_a_failing_sink_does_not_break_the_request_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def record_attempt(self, record: AttemptRecord) -> None:
            raise RuntimeError("disk full")

        def record_request(self, record: RequestRecord) -> None:
            raise RuntimeError("disk full")

    sink = Sink()
    recorder = Recorder([Broken(), sink])
    with caplog.at_level(logging.ERROR, logger="router.recorder"):
        record = finish(recorder, candidate(), Outcome.SUCCESS, chars=4)
        recorder.finish_request(new_scope(), RequestOutcome.SUCCESS, None, ended_at=0.0)
    assert sink.records == [record]
    assert len(sink.requests) == 1
    assert "record sink" in caplog.text


async def test_the_request_record_sums_every_attempt_and_counts_them_by_kind() -> None:
    sink = Sink()
    recorder = Recorder([sink])
    scope = new_scope()
    c = candidate(consecutive_failures=5)
    first = attempt(recorder, c, scope, usage=events_pb2.Usage(prompt_tokens=1000))
    first.record = recorder.finish(
        scope, first, Outcome.FAILURE, UNAVAILABLE, ended_at=first.started_at + 0.1
    )
    hedge = attempt(recorder, c, scope, kind=AttemptKind.HEDGE, chars=8)
    hedge.record = recorder.finish(scope, hedge, Outcome.CANCELLED, None, ended_at=hedge.started_at)
    winner = attempt(
        recorder,
        c,
        scope,
        kind=AttemptKind.RETRY,
        usage=events_pb2.Usage(prompt_tokens=1000, completion_tokens=100),
        ttft=0.2,
    )
    winner.record = recorder.finish(
        scope, winner, Outcome.SUCCESS, None, ended_at=winner.started_at + 0.3
    )
    scope.winner = winner
    scope.retries, scope.hedges = 1, 1
    ended_at = winner.started_at + 0.3
    record = recorder.finish_request(scope, RequestOutcome.SUCCESS, None, ended_at=ended_at)
    assert sink.requests == [record]
    assert (record.outcome, record.reason, record.deployment) == (
        RequestOutcome.SUCCESS,
        None,
        "d1",
    )
    assert (record.attempts, record.retries, record.hedges, record.fallbacks) == (3, 1, 1, 0)
    # 1000 prompt ($0.002) + the hedge's estimate (100 prompt, 2 completion: 220 micros)
    # + 1000 prompt and 100 completion ($0.003)
    assert record.usage.prompt_tokens == 2100
    assert record.cost_micros == 2000 + 220 + 3000
    assert record.usage.estimated  # one of the parts was an estimate
    assert record.ttft_s == pytest.approx(winner.first_output_at - scope.started_at)  # type: ignore[operator]
    assert 0 <= record.overhead_s <= record.latency_s


async def test_a_refused_request_is_recorded_with_its_reason_and_no_attempts() -> None:
    sink = Sink()
    scope = new_scope()
    refusal = MeshError.of(Reason.OVERLOADED, "busy", retry_after=1.0)
    record = Recorder([sink]).finish_request(
        scope, RequestOutcome.FAILURE, refusal, ended_at=scope.started_at + 0.001
    )
    assert (record.reason, record.attempts, record.deployment) == (Reason.OVERLOADED, 0, None)
    assert record.usage.cost_micros == 0
    assert record.overhead_s == pytest.approx(record.latency_s)
