"""The attempt loop: breaker gate, deadline, retry with backoff, fallback, hedging, relay."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import AsyncGenerator, Callable, Mapping

import grpc

from adapters.backend import Backend
from imesh.errors import MeshError
from imesh.v1 import chat_pb2, events_pb2
from router.attempt import END, Attempt, AttemptLimits
from router.config import Timeouts
from router.hedge import hedge_delay_s, hedge_has_time
from router.planner import Plan
from router.policies.base import Candidate
from router.recorder import Recorder
from router.retry import backoff_s

# The caller's request is at fault: another deployment would refuse it the same way.
_RETURN_AT_ONCE = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


class Executor:
    """Runs plans. Lifecycle: one per router, shared by all requests; holds no per-request
    state (each `run` builds its own `_Run`)."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        recorder: Recorder,
        timeouts: Timeouts,
        *,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._backends = backends
        self._recorder = recorder
        self._timeouts = timeouts
        self._clock = clock
        self._rng = rng

    async def run(
        self,
        plan: Plan,
        request: chat_pb2.ChatInput,
        request_id: str,
        deadline: float | None,
    ) -> AsyncGenerator[events_pb2.ChatEvent, None]:
        """Yields start, the winner's deltas, usage (with cost) and finish. Raises MeshError
        before the start; after it, yields an `error` event and raises. Closing the
        iterator cancels every running attempt and waits until their backends closed."""
        run = _Run(self, plan, request, request_id, deadline)
        try:
            winner = await run.race()
            async for event in run.relay(winner):
                yield event
        finally:
            await run.close()


class _Run:
    """One request's attempts. Before a winner: at most one primary attempt plus hedges."""

    def __init__(
        self,
        executor: Executor,
        plan: Plan,
        request: chat_pb2.ChatInput,
        request_id: str,
        deadline: float | None,
    ) -> None:
        self._x = executor
        self._plan = plan
        self._request = request
        self._request_id = request_id
        self._deadline = deadline
        # Every attempt puts itself here at most once: bounded by the attempts started.
        self._signals: asyncio.Queue[Attempt] = asyncio.Queue()
        self._attempts: list[Attempt] = []
        self._live: list[Attempt] = []
        self._failed: list[Attempt] = []
        self._excluded: set[str] = set()
        self._tried: set[str] = set()
        self._cursor = 0
        self._primaries = 0
        self._retries = 0
        self._hedges = 0
        self._hedge_from: Attempt | None = None  # the attempt the hedge timer runs for

    # -- racing: until one attempt has output -------------------------------------------

    async def race(self) -> Attempt:
        await self._start_primary()
        loop = asyncio.get_running_loop()
        while True:
            hedge_at = self._hedge_at()
            wake = min(hedge_at, math.inf if self._deadline is None else self._deadline)
            wake_loop = None if math.isinf(wake) else loop.time() + (wake - self._x._clock())
            try:
                async with asyncio.timeout_at(wake_loop):
                    attempt = await self._signals.get()
            except TimeoutError:
                if self._deadline is not None and self._x._clock() >= self._deadline:
                    raise self._deadline_error() from None
                self._start_hedge()
                continue
            self._live.remove(attempt)
            if attempt.has_output:
                return attempt
            await self._after_failure(attempt)

    async def _after_failure(self, attempt: Attempt) -> None:
        error = attempt.error
        assert error is not None
        self._failed.append(attempt)
        if error.code in _RETURN_AT_ONCE:
            metadata = {**error.metadata, "deployment": attempt.deployment}
            raise dataclasses.replace(error, metadata=metadata)
        if not error.retryable:
            # PERMISSION_DENIED, NOT_FOUND, UNAUTHENTICATED...: this deployment cannot serve
            # the request (model gone, key revoked); another one may.
            self._excluded.add(attempt.deployment)
        if self._live:
            return  # a hedge is still running: it is this request's next chance
        await self._start_primary()

    async def _start_primary(self) -> None:
        plan = self._plan
        for _ in range(len(plan.candidates) + 1):
            self._check_deadline()
            if self._primaries >= plan.retry.max_attempts:
                raise self._final_error()
            candidate = self._pick(self._cursor)
            if candidate is None:
                raise self._final_error()
            if candidate.name in self._tried:
                # Back off only when retrying a deployment already tried; falling back to
                # a fresh one needs no wait.
                delay = backoff_s(plan.retry, self._retries, self._x._rng)
                remaining = self._remaining()
                if remaining is not None and delay >= remaining:
                    raise self._final_error()
                self._retries += 1
                await asyncio.sleep(delay)
            self._cursor = plan.candidates.index(candidate) + 1
            if candidate.breaker.try_acquire():
                self._primaries += 1
                self._launch(candidate, hedge=False)
                return
        raise self._final_error()

    def _start_hedge(self) -> None:
        running = self._hedge_from
        self._hedge_from = None  # one hedge per timer; the new attempt restarts it
        if running is None:
            return
        delay = hedge_delay_s(self._plan.hedging, running.candidate)
        if not hedge_has_time(delay, self._remaining()):
            return
        budget = (
            self._request.routing.max_cost_micros
            if self._request.routing.HasField("max_cost_micros")
            else None
        )
        spent = sum(a.candidate.estimated_cost_micros for a in self._live)
        for i in range(len(self._plan.candidates)):
            candidate = self._pick(i)
            if candidate is None:
                return
            if budget is not None and spent + candidate.estimated_cost_micros > budget:
                continue
            if candidate.breaker.try_acquire():
                self._hedges += 1
                self._launch(candidate, hedge=True)
                return

    def _pick(self, start: int) -> Candidate | None:
        """The first candidate from `start` (wrapping) that is not excluded, not running,
        and whose breaker admits calls now."""
        candidates = self._plan.candidates
        busy = {a.deployment for a in self._live}
        n = len(candidates)
        for k in range(n):
            c = candidates[(start + k) % n]
            if c.name in self._excluded or c.name in busy or not c.breaker.available():
                continue
            return c
        return None

    def _launch(self, candidate: Candidate, *, hedge: bool) -> None:
        x = self._x
        now = x._clock()
        timeouts = x._timeouts
        attempt = Attempt(
            candidate=candidate,
            backend=x._backends[candidate.deployment.provider],
            request=self._request,
            number=len(self._attempts) + 1,
            hedge=hedge,
            request_id=self._request_id,
            prompt_tokens_estimate=self._plan.prompt_tokens_estimate,
            limits=AttemptLimits(
                first_token_at=now + timeouts.first_token,
                attempt_at=now + timeouts.attempt,
                request_at=self._deadline,
            ),
            recorder=x._recorder,
            signals=self._signals,
            clock=x._clock,
        )
        self._tried.add(candidate.name)
        self._attempts.append(attempt)
        self._live.append(attempt)
        attempt.start()
        if self._plan.hedging.enabled and self._hedges < self._plan.hedging.max_hedges:
            self._hedge_from = attempt

    def _hedge_at(self) -> float:
        running = self._hedge_from
        if running is None or running not in self._live:
            return math.inf
        return running.started_at + hedge_delay_s(self._plan.hedging, running.candidate)

    # -- relaying the winner ------------------------------------------------------------

    async def relay(self, winner: Attempt) -> AsyncGenerator[events_pb2.ChatEvent, None]:
        for other in self._live:
            other.cancel()  # losers stop now; close() waits for their backends to close
        deployment = winner.candidate.deployment
        yield events_pb2.ChatEvent(
            start=events_pb2.StreamStart(
                request_id=self._request_id,
                model=self._request.model,
                deployment=deployment.name,
                provider_model=deployment.model,
                attempt=winner.number,
            )
        )
        finish: events_pb2.Finish | None = None
        while True:
            item = await winner.events.get()
            if item is END:
                break
            assert isinstance(item, events_pb2.ChatEvent)
            which = item.WhichOneof("event")
            if which == "content" or which == "tool_call":
                yield item
            elif which == "finish":
                finish = item.finish  # sent after the router's usage event
            # usage: the record keeps the last one and prices it; start/error: not a
            # backend's to send.
        record = winner.record
        assert record is not None
        if winner.error is None:
            yield events_pb2.ChatEvent(usage=record.usage)
            yield events_pb2.ChatEvent(
                finish=finish or events_pb2.Finish(reason=events_pb2.FINISH_REASON_STOP)
            )
            return
        error = _interrupted(winner.error, deployment.name, record.usage)
        yield events_pb2.ChatEvent(error=error.to_event(deployment.name))
        raise error

    async def close(self) -> None:
        for attempt in self._attempts:
            attempt.cancel()
        pending = [a.task for a in self._attempts if not a.task.done()]
        if pending:
            await asyncio.wait(pending)
        for attempt in self._attempts:
            attempt.settle()

    # -- errors -------------------------------------------------------------------------

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - self._x._clock()

    def _check_deadline(self) -> None:
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            raise self._deadline_error()

    def _summary(self) -> tuple[str, dict[str, str]]:
        parts: list[str] = []
        metadata = {"model": self._plan.model, "attempts": str(len(self._failed))}
        for a in self._failed:
            text = f"{a.deployment}: {a.error}"
            parts.append(f"[{a.number}] {text}")
            metadata[f"attempt_{a.number}"] = text
        return "; ".join(parts), metadata

    def _final_error(self) -> MeshError:
        if not self._failed:
            waits = [c.breaker.retry_after() for c in self._plan.candidates]
            return MeshError(
                grpc.StatusCode.UNAVAILABLE,
                "ALL_BREAKERS_OPEN",
                f"no deployment of {self._plan.model!r} admits calls now",
                retry_after=min(waits, default=0.0) or None,
                metadata={"model": self._plan.model},
            )
        last = self._failed[-1].error
        assert last is not None
        summary, metadata = self._summary()
        return MeshError(
            last.code,
            "ALL_ATTEMPTS_FAILED",
            f"all {len(self._failed)} attempts failed: {summary}",
            retry_after=last.retry_after,
            metadata=metadata,
        )

    def _deadline_error(self) -> MeshError:
        summary, metadata = self._summary()
        message = "the call's deadline passed before a first token"
        return MeshError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DEADLINE_EXCEEDED",
            f"{message}; {summary}" if summary else message,
            metadata=metadata,
        )


def _interrupted(error: MeshError, deployment: str, usage: events_pb2.Usage) -> MeshError:
    """The typed end of a stream that failed after output reached the caller."""
    reason = "DEADLINE_EXCEEDED" if error.reason == "DEADLINE_EXCEEDED" else "UPSTREAM_INTERRUPTED"
    return MeshError(
        error.code,
        reason,
        f"{deployment}: stream interrupted after output began: {error.message}",
        retry_after=error.retry_after,
        metadata={"deployment": deployment, "upstream_reason": error.reason},
        usage=usage,
    )
