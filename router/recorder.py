"""Recorder: the one place the end of an attempt (breaker verdict, stats, spend) and of a
whole request are recorded, and handed to the record sinks."""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from adapters.token_estimate import tokens_for_chars
from imesh.errors import MeshError, Reason, Verdict, classify
from imesh.v1 import events_pb2
from router.breaker import BreakerState
from router.pricing import cost_micros
from router.scope import Caller, RequestScope

if TYPE_CHECKING:
    from router.attempt import Attempt
    from router.tracing import RouterTracer

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"
    RATE_LIMITED = "rate_limited"


class AttemptKind(enum.Enum):
    PRIMARY = "primary"  # the request's first attempt
    RETRY = "retry"  # again on a deployment this request already tried
    FALLBACK = "fallback"  # after a failure, on a deployment not tried yet
    HEDGE = "hedge"  # beside a silent attempt still running


class RequestOutcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # refused or failed, `reason` says why
    CANCELLED = "cancelled"  # the caller went away


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """What one attempt did and cost. `usage.cost_micros` is filled; `estimated` says how."""

    request_id: str
    caller: Caller
    model: str
    deployment: str
    provider: str
    attempt: int  # 1-based ordinal among the request's attempts
    kind: AttemptKind
    outcome: Outcome
    error: MeshError | None
    latency_s: float
    ttft_s: float | None
    usage: events_pb2.Usage
    produced_output: bool
    won: bool = False  # its answer is the one the caller got

    @property
    def hedge(self) -> bool:
        return self.kind is AttemptKind.HEDGE

    @property
    def cost_micros(self) -> int:
        return self.usage.cost_micros


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What one request came to: its outcome, the deployment whose answer the caller got,
    its attempts (counted by kind), everything they spent, and where the time went.

    `overhead_s` is the time the request spent in the mesh with no attempt running and no
    backoff under way (authentication, admission, planning, relaying the end)."""

    request_id: str
    caller: Caller
    model: str
    outcome: RequestOutcome
    reason: Reason | None
    error: MeshError | None
    deployment: str | None  # the winner; None when no attempt produced the answer
    attempts: int
    retries: int
    fallbacks: int
    hedges: int
    usage: events_pb2.Usage  # every attempt's usage summed, cost included
    latency_s: float
    ttft_s: float | None
    overhead_s: float

    @property
    def cost_micros(self) -> int:
        return self.usage.cost_micros


class RecordSink(Protocol):
    """Receives every finished attempt and every finished request (metrics, usage
    accounting, logs). `record_attempt` comes for each attempt (hedge losers included)
    as it ends; `record_request` once per request, after its attempts.

    Called synchronously on the event loop: must not block; queue work if it is slow.
    """

    def record_attempt(self, record: AttemptRecord) -> None: ...

    def record_request(self, record: RequestRecord) -> None: ...


def outcome_of(error: MeshError | None) -> Outcome:
    if error is None:
        return Outcome.SUCCESS
    if classify(error).verdict is Verdict.COOL_DOWN:
        return Outcome.RATE_LIMITED
    return Outcome.FAILURE


def billed_usage(attempt: Attempt, *, prompt_sent: bool = True) -> events_pb2.Usage:
    """The attempt's usage as billed: what the provider reported, else an estimate (the
    prompt was spent once it was sent, even without output), priced."""
    usage = events_pb2.Usage()
    reported = attempt.usage
    if reported is not None:
        usage.CopyFrom(reported)
    elif prompt_sent:
        usage.prompt_tokens = attempt.prompt_tokens_estimate
        usage.completion_tokens = tokens_for_chars(attempt.output_chars)
        usage.estimated = True
    usage.cost_micros = cost_micros(usage, attempt.candidate.rates)
    return usage


class Recorder:
    """Lifecycle: one per router. `begin` when an attempt starts, `finish` exactly once at
    its end (success, failure or cancellation); `finish` returns the record the caller's
    usage event is built from, so what the caller is billed and what is recorded agree.
    `finish_request` once per request, at settle."""

    def __init__(
        self, sinks: Sequence[RecordSink] = (), tracer: RouterTracer | None = None
    ) -> None:
        self._sinks = tuple(sinks)
        # Spans start and end with what is recorded here: the request's at its start and
        # settle, each attempt's around its task.
        self.tracer = tracer

    def begin_request(self, scope: RequestScope) -> None:
        if self.tracer is not None:
            self.tracer.start_request(scope)

    def begin(self, attempt: Attempt) -> None:
        attempt.candidate.stats.begin()

    def finish(
        self,
        scope: RequestScope,
        attempt: Attempt,
        outcome: Outcome,
        error: MeshError | None,
        *,
        ended_at: float,
        prompt_sent: bool = True,
    ) -> AttemptRecord:
        candidate = attempt.candidate
        deployment = candidate.deployment
        ttft = attempt.ttft_s
        record = AttemptRecord(
            request_id=scope.request_id,
            caller=scope.caller,
            model=scope.model,
            deployment=deployment.name,
            provider=deployment.provider,
            attempt=attempt.number,
            kind=attempt.kind,
            outcome=outcome,
            error=error,
            latency_s=ended_at - attempt.started_at,
            ttft_s=ttft,
            usage=billed_usage(attempt, prompt_sent=prompt_sent),
            produced_output=attempt.output_chars > 0 or ttft is not None,
            won=scope.winner is attempt,
        )
        self._verdict(attempt, outcome, error)
        candidate.stats.end()
        if ttft is not None:
            candidate.stats.record_ttft(ttft)
        if self.tracer is not None:
            self.tracer.end_attempt(attempt, record)
        for sink in self._sinks:
            try:
                sink.record_attempt(record)
            except Exception:  # a broken sink must not break the request path
                log.exception("record sink %r failed", sink)
        return record

    def finish_request(
        self,
        scope: RequestScope,
        outcome: RequestOutcome,
        error: MeshError | None,
        *,
        ended_at: float,
    ) -> RequestRecord:
        attempts = scope.attempts
        if len(attempts) == 1:  # the common case: the sum is the one attempt's usage
            only = attempts[0]
            usage = events_pb2.Usage()
            if only.record is not None:
                usage.CopyFrom(only.record.usage)
            covered = (only.ended_at or ended_at) - only.started_at
        else:
            usage, covered = _summed(attempts, ended_at)
        winner = scope.winner
        latency = ended_at - scope.started_at
        ttft = (
            winner.first_output_at - scope.started_at
            if winner is not None and winner.first_output_at is not None and not winner.whole
            else None
        )
        record = RequestRecord(
            request_id=scope.request_id,
            caller=scope.caller,
            model=scope.model,
            outcome=outcome,
            reason=error.reason if error is not None else None,
            error=error,
            deployment=winner.candidate.name if winner is not None else None,
            attempts=len(attempts),
            retries=scope.retries,
            fallbacks=scope.fallbacks,
            hedges=scope.hedges,
            usage=usage,
            latency_s=latency,
            ttft_s=ttft,
            overhead_s=max(latency - covered - scope.backoff_s, 0.0),
        )
        if self.tracer is not None:
            self.tracer.end_request(scope, record)
        for sink in self._sinks:
            try:
                sink.record_request(record)
            except Exception:
                log.exception("record sink %r failed", sink)
        return record

    @staticmethod
    def _verdict(attempt: Attempt, outcome: Outcome, error: MeshError | None) -> None:
        breaker = attempt.candidate.breaker
        permit = attempt.permit
        before = breaker.state
        if outcome is Outcome.SUCCESS:
            breaker.record_success(permit)
        elif outcome is Outcome.CANCELLED or error is None:
            breaker.release(permit)
        else:
            verdict = classify(error).verdict
            if verdict is Verdict.FAILURE:
                breaker.record_failure(permit)
            else:
                breaker.release(permit)
                if verdict is Verdict.COOL_DOWN:
                    # A 429 says "later", not "broken": rest without counting a failure.
                    breaker.cool_down(error.retry_after or 0.0)
        after = breaker.state
        if after is not before:
            # Rare and operator-relevant: the only log line on the request path.
            level = logging.WARNING if after is BreakerState.OPEN else logging.INFO
            log.log(
                level,
                "deployment %s: breaker %s -> %s (%s)",
                attempt.candidate.name,
                before.name.lower(),
                after.name.lower(),
                error.reason.value if error is not None else outcome.value,
            )


def _summed(attempts: Sequence[Attempt], ended_at: float) -> tuple[events_pb2.Usage, float]:
    """Every attempt's usage summed, and the time some attempt was running."""
    usage = events_pb2.Usage()
    estimated = False
    spans: list[tuple[float, float]] = []
    for attempt in attempts:
        spent = attempt.record.usage if attempt.record is not None else None
        if spent is not None:
            usage.prompt_tokens += spent.prompt_tokens
            usage.completion_tokens += spent.completion_tokens
            usage.cached_tokens += spent.cached_tokens
            usage.reasoning_tokens += spent.reasoning_tokens
            usage.cost_micros += spent.cost_micros
            estimated = estimated or spent.estimated
        spans.append((attempt.started_at, attempt.ended_at or ended_at))
    usage.estimated = estimated
    return usage, _covered(spans)


def _covered(spans: list[tuple[float, float]]) -> float:
    """Total length of the union of the intervals (hedges overlap their primary)."""
    total = 0.0
    end = float("-inf")
    for start, stop in sorted(spans):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total
