"""Recorder: the one place an attempt's end is recorded (breaker verdict, stats, spend, sinks)."""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from imesh.errors import MeshError
from imesh.v1 import events_pb2
from router.breaker import BreakerState, CircuitBreaker
from router.policies.base import Candidate
from router.pricing import cost_micros

log = logging.getLogger(__name__)

# Roughly four characters per token: good enough for an estimate the caller is told about.
CHARS_PER_TOKEN = 4

# The reason of an attempt ended by the caller's own deadline: no verdict on the deployment
# (one caller's short deadlines must not open a breaker for everyone). The router's own
# first-token and attempt timeouts do count.
CALLER_DEADLINE = "DEADLINE_EXCEEDED"

# The caller's request was at fault, not the deployment: no verdict on its health.
_CALLER_FAULT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.CANCELLED,
    }
)


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """What one attempt did and cost. `usage.cost_micros` is filled; `estimated` says how."""

    request_id: str
    model: str
    deployment: str
    provider: str
    attempt: int  # 1-based ordinal among the request's attempts
    hedge: bool
    outcome: Outcome
    error: MeshError | None
    latency_s: float
    ttft_s: float | None
    usage: events_pb2.Usage
    produced_output: bool

    @property
    def cost_micros(self) -> int:
        return self.usage.cost_micros


class RecordSink(Protocol):
    """Receives every finished attempt (metrics, usage accounting, logs).

    Called synchronously on the event loop: must not block; queue work if it is slow.
    """

    def record(self, record: AttemptRecord) -> None: ...


def estimate_completion_tokens(chars: int) -> int:
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def outcome_of(error: MeshError | None) -> Outcome:
    if error is None:
        return Outcome.SUCCESS
    if error.rate_limited:
        return Outcome.RATE_LIMITED
    return Outcome.FAILURE


class Recorder:
    """Lifecycle: one per router. `begin` when an attempt starts, `finish` exactly once at
    its end (success, failure or cancellation); `finish` returns the record the caller's
    usage event is built from, so what the caller is billed and what is recorded agree."""

    def __init__(self, sinks: Sequence[RecordSink] = ()) -> None:
        self._sinks = tuple(sinks)

    def begin(self, candidate: Candidate) -> None:
        candidate.stats.begin()

    def finish(
        self,
        candidate: Candidate,
        *,
        request_id: str,
        model: str,
        attempt: int,
        hedge: bool,
        outcome: Outcome,
        error: MeshError | None,
        latency_s: float,
        ttft_s: float | None,
        reported_usage: events_pb2.Usage | None,
        prompt_tokens_estimate: int,
        output_chars: int,
    ) -> AttemptRecord:
        deployment = candidate.deployment
        usage = events_pb2.Usage()
        if reported_usage is not None:
            usage.CopyFrom(reported_usage)
        elif outcome is Outcome.SUCCESS or output_chars > 0 or outcome is Outcome.CANCELLED:
            # No usage from the provider: what it most likely billed. A cancelled attempt
            # was sent the prompt, so the prompt is spent even without output.
            usage.prompt_tokens = prompt_tokens_estimate
            usage.completion_tokens = estimate_completion_tokens(output_chars)
            usage.estimated = True
        usage.cost_micros = cost_micros(usage, deployment.price)
        record = AttemptRecord(
            request_id=request_id,
            model=model,
            deployment=deployment.name,
            provider=deployment.provider,
            attempt=attempt,
            hedge=hedge,
            outcome=outcome,
            error=error,
            latency_s=latency_s,
            ttft_s=ttft_s,
            usage=usage,
            produced_output=output_chars > 0 or ttft_s is not None,
        )
        self._verdict(candidate, outcome, error)
        candidate.stats.end()
        if ttft_s is not None:
            candidate.stats.record_ttft(ttft_s)
        for sink in self._sinks:
            try:
                sink.record(record)
            except Exception:  # a broken sink must not break the request path
                log.exception("record sink %r failed", sink)
        return record

    @staticmethod
    def _verdict(candidate: Candidate, outcome: Outcome, error: MeshError | None) -> None:
        breaker = candidate.breaker
        before = breaker.state
        Recorder._apply_verdict(breaker, outcome, error)
        after = breaker.state
        if after is not before:
            # Rare and operator-relevant: the only log line on the request path.
            level = logging.WARNING if after is BreakerState.OPEN else logging.INFO
            log.log(
                level,
                "deployment %s: breaker %s -> %s (%s)",
                candidate.deployment.name,
                before.name.lower(),
                after.name.lower(),
                error.reason if error is not None else outcome.value,
            )

    @staticmethod
    def _apply_verdict(breaker: CircuitBreaker, outcome: Outcome, error: MeshError | None) -> None:
        if outcome is Outcome.SUCCESS:
            breaker.record_success()
        elif outcome is Outcome.CANCELLED:
            breaker.release()
        elif outcome is Outcome.RATE_LIMITED:
            # A 429 says "later", not "broken": cool down without counting a failure.
            breaker.release()
            breaker.cool_down(error.retry_after if error and error.retry_after else 0.0)
        elif error is not None and (
            error.code in _CALLER_FAULT_CODES or error.reason == CALLER_DEADLINE
        ):
            breaker.release()
        else:
            breaker.record_failure()
