"""The Recorder: one place per attempt end; breaker verdicts, spend and stats agree."""

from __future__ import annotations

import logging

import grpc
import pytest

from imesh.errors import MeshError
from imesh.v1 import events_pb2
from router.breaker import BreakerState, CircuitBreaker
from router.config import BreakerConfig, Deployment, Price
from router.policies.base import Candidate
from router.recorder import AttemptRecord, Outcome, Recorder
from router.stats import DeploymentStats

UNAVAILABLE = MeshError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "down")
RATE_LIMITED = MeshError(
    grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", "slow down", retry_after=7.0
)


class Sink:
    def __init__(self) -> None:
        self.records: list[AttemptRecord] = []

    def record(self, record: AttemptRecord) -> None:
        self.records.append(record)


def candidate(consecutive_failures: int = 2) -> Candidate:
    deployment = Deployment(name="d1", provider="p", model="m", price=Price(input=2, output=10))
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=consecutive_failures))
    return Candidate(deployment, breaker, DeploymentStats(), estimated_cost_micros=0)


def finish(
    recorder: Recorder,
    c: Candidate,
    outcome: Outcome,
    error: MeshError | None = None,
    usage: events_pb2.Usage | None = None,
    chars: int = 0,
    ttft: float | None = None,
) -> AttemptRecord:
    assert c.breaker.try_acquire()
    recorder.begin(c)
    return recorder.finish(
        c,
        request_id="r",
        model="auto",
        attempt=1,
        hedge=False,
        outcome=outcome,
        error=error,
        latency_s=0.5,
        ttft_s=ttft,
        reported_usage=usage,
        prompt_tokens_estimate=100,
        output_chars=chars,
    )


def test_reported_usage_is_priced_in_integer_micros_and_sent_to_sinks() -> None:
    sink = Sink()
    recorder = Recorder([sink])
    c = candidate()
    usage = events_pb2.Usage(prompt_tokens=1000, completion_tokens=500)
    record = finish(recorder, c, Outcome.SUCCESS, usage=usage, chars=10, ttft=0.1)
    # 1000 * $2/M + 500 * $10/M = $0.002 + $0.005
    assert record.cost_micros == 7000
    assert record.usage.estimated is False
    assert sink.records == [record]
    assert c.stats.in_flight == 0
    assert c.stats.ttft_ewma == pytest.approx(0.1)


def test_cancelled_attempt_without_usage_still_bills_the_prompt_estimate() -> None:
    record = finish(Recorder(), candidate(), Outcome.CANCELLED, chars=8)
    assert record.usage.estimated is True
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (100, 2)
    assert record.cost_micros == 100 * 2 + 2 * 10


def test_rate_limited_attempt_cools_down_without_counting_a_failure() -> None:
    c = candidate(consecutive_failures=1)
    finish(Recorder(), c, Outcome.RATE_LIMITED, RATE_LIMITED)
    assert c.breaker.state is BreakerState.CLOSED  # one failure would have opened it
    assert not c.breaker.available()
    assert 6.0 < c.breaker.retry_after() <= 7.0


def test_breaker_opening_is_logged_once_naming_the_deployment(
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


def test_a_failing_sink_does_not_break_the_request_path(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def record(self, record: AttemptRecord) -> None:
            raise RuntimeError("disk full")

    sink = Sink()
    with caplog.at_level(logging.ERROR, logger="router.recorder"):
        record = finish(Recorder([Broken(), sink]), candidate(), Outcome.SUCCESS, chars=4)
    assert sink.records == [record]
    assert "record sink" in caplog.text
