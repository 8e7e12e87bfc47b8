"""The execute stage: races attempts (breaker gate, deadline, retry with backoff, fallback,
hedging) until one has output, then hands the winner's batches to the request."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from imesh.errors import Fault, MeshError, Reason, classify
from imesh.v1 import events_pb2
from router.attempt import Attempt
from router.candidate import Candidate
from router.config import Timeouts
from router.hedge import hedge_delay_s, hedge_has_time
from router.planner import Plan, unavailable_error
from router.recorder import AttemptKind, Recorder, billed_usage
from router.retry import backoff_s
from router.scope import RequestScope

_STOP = events_pb2.Finish(reason=events_pb2.FINISH_REASON_STOP)


class Executor:
    """Runs plans. Lifecycle: one per router, shared by all requests; holds no per-request
    state (each `run` builds its own `Run`)."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        recorder: Recorder,
        timeouts: Timeouts,
        *,
        rng: random.Random,
        overloaded_retry_after_s: float = 1.0,
    ) -> None:
        self.backends = backends
        self.recorder = recorder
        self.timeouts = timeouts
        self.rng = rng
        # RetryInfo of a request refused because every candidate is at its limit.
        self.overloaded_retry_after_s = overloaded_retry_after_s

    def run(self, scope: RequestScope, plan: Plan) -> Run:
        return Run(self, scope, plan)


class Run:
    """One request's attempts. Before a winner: without hedging, one attempt at a time,
    each opened in the request's own task (retries and fallbacks follow in order; no task,
    queue or future). With hedging (or a span per attempt to parent: tracing), at most one
    primary attempt plus hedges race, each opening in its own task. Either way the
    request's task then reads the winner directly.

    Lifecycle: `first_batch()` once (start + the first output; raises MeshError when no
    attempt gets there), `next_batch()` until None (the last batch carries usage and
    finish, or the error event, after which `next_batch()` raises that error), and
    `close()` always, which ends every attempt and waits until their backends closed.
    """

    def __init__(self, executor: Executor, scope: RequestScope, plan: Plan) -> None:
        self._x = executor
        self._scope = scope
        self._plan = plan
        tracer = executor.recorder.tracer
        # Attempts race in their own tasks when hedges may join them, or when each needs
        # a task whose context carries its span (router.tracing).
        self._racing = plan.hedging.enabled or (tracer is not None and tracer.enabled)
        # Every attempt puts itself here once (when it can win or has failed): bounded.
        self._ready: asyncio.Queue[Attempt] | None = asyncio.Queue() if self._racing else None
        self._live: list[Attempt] = []
        self._failed: list[Attempt] = []
        self._excluded: set[str] = set()
        self._tried: set[str] = set()
        self._full: set[str] = set()  # skipped: at their per-deployment limit
        self._cursor = 0
        self._primaries = 0
        self._hedge_from: Attempt | None = None  # the attempt the hedge timer runs for
        self._winner: Attempt | None = None
        self._final_sent = False
        self._done = False
        self._error: MeshError | None = None

    # -- the caller's side ------------------------------------------------------------------

    @property
    def final_sent(self) -> bool:
        """The batch with usage and finish was handed out: the answer is complete."""
        return self._final_sent

    async def first_batch(self) -> Batch:
        winner = await (self._race() if self._racing else self._in_turn())
        self._winner = self._scope.winner = winner
        for other in self._live:
            if other is not winner:
                other.cancel()  # losers stop now; close() waits for their backends
        winner.take_over()
        deployment = winner.candidate.deployment
        start = events_pb2.ChatEvent(
            start=events_pb2.StreamStart(
                request_id=self._scope.request_id,
                model=self._scope.model,
                deployment=deployment.name,
                provider_model=deployment.model,
                attempt=winner.number,
            )
        )
        batch = [start, *winner.first_output]
        if winner.finish is not None or winner.ended_clean:
            self._add_final(batch)  # the whole answer came in the first read
        return batch

    async def next_batch(self) -> Batch | None:
        if self._done:
            if self._error is not None:
                raise self._error
            return None
        winner = self._winner
        assert winner is not None, "first_batch() first"
        out = await winner.read()
        while out is not None and self._final_sent:
            out = await winner.read()  # after the finish only the stream's end is left
        if out is not None:
            if winner.finish is not None:
                self._add_final(out)
            return out
        self._done = True
        if winner.error is None or self._final_sent:
            # Ended. A failure after the finish reached the caller changes nothing it got.
            return None if self._final_sent else self._add_final([])
        assert winner.record is not None
        self._error = _interrupted(winner.error, winner.deployment, winner.record.usage)
        return [events_pb2.ChatEvent(error=self._error.to_event(winner.deployment))]

    def _add_final(self, batch: Batch) -> Batch:
        if not self._final_sent:
            self._final_sent = True
            winner = self._winner
            assert winner is not None
            usage = winner.record.usage if winner.record is not None else billed_usage(winner)
            batch.append(events_pb2.ChatEvent(usage=usage))
            batch.append(events_pb2.ChatEvent(finish=winner.finish or _STOP))
        return batch

    async def finish(self) -> None:
        """After the final batch went out: reads the winner's stream to its end (so it is
        recorded as ended, not cancelled), then closes every attempt, like `close()`."""
        try:
            if self._final_sent:
                await self.next_batch()  # after the finish: None once the stream ended
        finally:
            await self.close()

    def abandon(self) -> None:
        """`close()` without waiting, for a close that can no longer run (its task was
        cancelled before it started): every attempt is recorded as cancelled and its
        permit given back; streams left open are closed by the loop's async-generator
        finalizer."""
        for attempt in self._scope.attempts:
            attempt.abandon()

    async def close(self) -> None:
        attempts = self._scope.attempts
        interrupted: BaseException | None = None
        if self._racing:  # else no attempt has a task of its own
            for attempt in attempts:
                if attempt is not self._winner:
                    attempt.cancel()
            pending = [t for a in attempts if (t := a.running_task) is not None]
            if pending:
                try:
                    await asyncio.wait(pending)
                except BaseException as exc:  # a second cancel: still close every attempt
                    interrupted = exc
        for attempt in attempts:
            if attempt.over:
                continue  # ended, recorded and closed: nothing to wait for
            try:
                await attempt.close()
            except BaseException as exc:  # each attempt is closed whatever another did
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted

    # -- until one attempt has output ---------------------------------------------------

    async def _in_turn(self) -> Attempt:
        """No race: each attempt opens in this task. Its ReadTimer bounds every read by
        the first-token and attempt limits and the request's deadline, so nothing else
        needs a timer here."""
        while True:
            attempt = self._first_primary() or await self._start_primary()
            await attempt.open()
            self._live.remove(attempt)
            if attempt.has_output:
                return attempt
            self._after_failure(attempt)

    async def _race(self) -> Attempt:
        if self._first_primary() is None:
            await self._start_primary()
        ready = self._ready
        assert ready is not None
        deadline = self._scope.deadline
        while True:
            wake = min(Deadline(self._hedge_at()), deadline)
            try:
                async with asyncio.timeout_at(wake.loop_at()):
                    attempt = await ready.get()
            except TimeoutError:
                if deadline.expired():
                    raise self._deadline_error() from None
                self._start_hedge()
                continue
            self._live.remove(attempt)
            if attempt.has_output:
                return attempt
            self._after_failure(attempt)
            if not self._live:  # else a hedge still runs: it is this request's next chance
                await self._start_primary()

    def _after_failure(self, attempt: Attempt) -> None:
        """Raises when the failure ends the request; else the next primary may start."""
        error = attempt.error
        assert error is not None
        self._failed.append(attempt)
        verdict = classify(error)
        if not verdict.retryable:
            if error.reason is Reason.CALLER_DEADLINE:
                raise self._deadline_error()
            if verdict.fault is Fault.CALLER:
                # The request itself was refused: another deployment would refuse it too.
                raise error.with_metadata(deployment=attempt.deployment)
            raise self._final_error()
        if verdict.exclude:
            # Wrong credentials or model on this deployment: the others may serve it.
            self._excluded.add(attempt.deployment)

    def _first_primary(self) -> Attempt | None:
        """The request's first attempt, launched without a coroutine (nothing was tried,
        so nothing to back off from); None when it is not the first or its breaker
        refused the permit (then `_start_primary` carries on). Raises as it would."""
        if self._primaries or self._tried:
            return None
        plan = self._plan
        if self._scope.deadline.expired():
            raise self._deadline_error()
        if plan.retry.max_attempts <= 0:
            raise self._final_error()
        candidate = self._pick(0)
        if candidate is None:
            raise self._final_error()
        self._cursor = plan.candidates.index(candidate) + 1
        attempt = self._launch(candidate, AttemptKind.PRIMARY)
        if attempt is not None:
            self._primaries += 1
        return attempt

    async def _start_primary(self) -> Attempt:
        """Launches the next primary (a retry after its backoff, or a fallback); raises
        when none may run."""
        plan, scope = self._plan, self._scope
        for _ in range(len(plan.candidates) + 1):
            if scope.deadline.expired():
                raise self._deadline_error()
            if self._primaries >= plan.retry.max_attempts:
                raise self._final_error()
            candidate = self._pick(self._cursor)
            if candidate is None:
                raise self._final_error()
            kind = AttemptKind.PRIMARY if not scope.attempts else AttemptKind.FALLBACK
            if candidate.name in self._tried:
                # Back off only when retrying a deployment already tried; falling back to
                # a fresh one needs no wait.
                kind = AttemptKind.RETRY
                delay = backoff_s(plan.retry, scope.retries, self._x.rng)
                if delay >= scope.deadline.remaining():
                    raise self._final_error()
                await asyncio.sleep(delay)
                scope.backoff_s += delay
            self._cursor = plan.candidates.index(candidate) + 1
            attempt = self._launch(candidate, kind)
            if attempt is not None:
                self._primaries += 1
                return attempt
        raise self._final_error()

    def _start_hedge(self) -> None:
        running = self._hedge_from
        self._hedge_from = None  # one hedge per timer; the new attempt restarts it
        if running is None:
            return
        delay = hedge_delay_s(self._plan.hedging, running.candidate)
        if not hedge_has_time(delay, self._scope.deadline.remaining()):
            return
        routing = self._scope.request.routing
        budget = routing.max_cost_micros if routing.HasField("max_cost_micros") else None
        spent = sum(a.candidate.estimated_cost_micros for a in self._live)
        for i in range(len(self._plan.candidates)):
            candidate = self._pick(i)
            if candidate is None:
                return
            if budget is not None and spent + candidate.estimated_cost_micros > budget:
                continue
            if self._launch(candidate, AttemptKind.HEDGE) is not None:
                return

    def _pick(self, start: int) -> Candidate | None:
        """The first candidate from `start` (wrapping) that is not excluded, not running,
        below its concurrency limit, and whose breaker admits calls now."""
        candidates = self._plan.candidates
        live = self._live
        busy = {a.candidate.name for a in live} if live else ()
        excluded = self._excluded
        n = len(candidates)
        for k in range(n):
            c = candidates[(start + k) % n]
            name = c.name
            if name in excluded or name in busy or not c.breaker.available():
                continue
            limit = c.max_in_flight
            if limit is not None and c.stats.in_flight >= limit:  # c.full
                self._full.add(name)
                continue
            return c
        return None

    def _launch(self, candidate: Candidate, kind: AttemptKind) -> Attempt | None:
        """An attempt holding the breaker's permit (None: no permit), started in its own
        task when racing; else the caller opens it."""
        permit = candidate.breaker.try_acquire()
        if permit is None:
            return None
        x, scope = self._x, self._scope
        attempt = Attempt(
            scope,
            candidate,
            permit,
            x.backends[candidate.deployment.provider],
            kind=kind,
            timeouts=x.timeouts,
            recorder=x.recorder,
            on_ready=None if self._ready is None else self._ready.put_nowait,
        )
        if kind is AttemptKind.RETRY:
            scope.retries += 1
        elif kind is AttemptKind.FALLBACK:
            scope.fallbacks += 1
        elif kind is AttemptKind.HEDGE:
            scope.hedges += 1
        self._tried.add(candidate.name)
        scope.attempts.append(attempt)
        self._live.append(attempt)
        if self._racing:
            attempt.start()
            if self._plan.hedging.enabled and scope.hedges < self._plan.hedging.max_hedges:
                self._hedge_from = attempt
        return attempt

    def _hedge_at(self) -> float:
        running = self._hedge_from
        if running is None or running not in self._live:
            return math.inf
        return running.started_at + hedge_delay_s(self._plan.hedging, running.candidate)

    # -- errors -------------------------------------------------------------------------

    def _summary(self) -> tuple[str, dict[str, str]]:
        parts: list[str] = []
        metadata = {"model": self._plan.model, "attempts": str(len(self._failed))}
        for a in self._failed:
            assert a.error is not None
            text = f"{a.deployment}: {a.error.reason.value}: {a.error.message}"
            parts.append(f"[{a.number}] {text}")
            metadata[f"attempt_{a.number}"] = text
        return "; ".join(parts), metadata

    def _final_error(self) -> MeshError:
        if not self._failed:
            if self._full:
                return MeshError.of(
                    Reason.OVERLOADED,
                    f"every deployment of {self._plan.model!r} that can serve this request "
                    "is at its concurrency limit; retry shortly",
                    retry_after=self._x.overloaded_retry_after_s,
                    metadata={"model": self._plan.model},
                )
            return unavailable_error(self._plan.model, self._plan.candidates)
        last = self._failed[-1].error
        assert last is not None
        summary, metadata = self._summary()
        return MeshError(
            last.code,
            Reason.ALL_ATTEMPTS_FAILED,
            f"all {len(self._failed)} attempts failed: {summary}",
            retry_after=last.retry_after,
            metadata=metadata,
        )

    def _deadline_error(self) -> MeshError:
        summary, metadata = self._summary()
        message = "the caller's deadline passed before a first token"
        return MeshError.of(
            Reason.CALLER_DEADLINE,
            f"{message}; {summary}" if summary else message,
            metadata=metadata,
        )


_INTERRUPTED = "stream interrupted: "


def _interrupted(error: MeshError, deployment: str, usage: events_pb2.Usage) -> MeshError:
    """The typed end of a stream that failed after output reached the caller: the cause's
    code, the partial usage, and a message that says so once, however many hops (an
    adapter service, another router) already said it."""
    metadata = {**error.metadata, "deployment": deployment}
    if error.reason is Reason.CALLER_DEADLINE:
        return error.replace(metadata=metadata, usage=usage)
    if error.reason is not Reason.UPSTREAM_INTERRUPTED:
        metadata["upstream_reason"] = error.reason.value
    message = error.message
    if not message.startswith(_INTERRUPTED):
        message = _INTERRUPTED + message
    return MeshError(
        error.code,
        Reason.UPSTREAM_INTERRUPTED,
        message,
        retry_after=error.retry_after,
        metadata=metadata,
        usage=usage,
    )
