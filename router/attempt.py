"""One attempt: a call to one deployment, opened in its own task (a hedged race) or in the
request's (no race), then read by the request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import grpc

from adapters.backend import Backend, Batch
from adapters.deadline import NO_DEADLINE, Deadline
from adapters.read_timer import ReadTimer
from imesh.errors import MeshError, Reason
from imesh.v1 import adapter_service_pb2, events_pb2
from router.breaker import Permit
from router.candidate import Candidate
from router.config import Timeouts
from router.recorder import AttemptKind, AttemptRecord, Outcome, Recorder, outcome_of
from router.scope import RequestScope

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)


class Attempt:
    """Lifecycle:

    - The opening: open the backend stream and read it until the first batch with output
      (content or a tool call), its end, or a failure. A failed attempt is recorded by
      then; one that ended cleanly without output once the request knows whether it won.
      Either `await open()` runs it in the caller's task (nothing races the attempt: no
      task, queue or future), or `start()` runs it in the attempt's own task (a hedged
      race), which then calls `on_ready(self)` once.
    - A started attempt with output waits there, its stream open, until the request
      decides: `take_over()` (it won: from now on the request's task reads the stream
      directly with `read()`, no queue between them) or `cancel()` (it lost: its task
      closes the stream and records it). An opened one is the request's already.
    - `close()` ends it whatever its state: the backend stream is closed and the attempt
      recorded, exactly once (a hedge cancelled before its task ran included).

    One ReadTimer (not tied to a task: the stream changes readers) bounds every read:
    first the first-token limit, rescheduled at the first output to the attempt's limit;
    the request's deadline bounds both.

    A `whole` attempt (a unary caller, a backend that `answers_whole`, no hedging) asks
    for the whole answer in one non-streaming upstream call. Its first output is the whole
    answer, so the attempt timeout bounds it instead of the first-token timeout, and it
    has no time to first token (it feeds no TTFT statistics). Hedged requests stream: a
    hedge delay is a first token's p95, which nearly every whole answer would exceed.
    """

    def __init__(
        self,
        scope: RequestScope,
        candidate: Candidate,
        permit: Permit,
        backend: Backend,
        *,
        kind: AttemptKind,
        timeouts: Timeouts,
        recorder: Recorder,
        on_ready: Callable[[Attempt], None] | None = None,
    ) -> None:
        self.scope = scope
        self.candidate = candidate
        self.permit = permit
        self.kind = kind
        self.number = len(scope.attempts) + 1
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        self.first_output_at: float | None = None
        self.first_output: Batch = []
        self.usage: events_pb2.Usage | None = None  # the last the backend reported
        self.finish: events_pb2.Finish | None = None
        self.output_chars = 0
        self.error: MeshError | None = None
        self.record: AttemptRecord | None = None
        plan = scope.plan
        self.prompt_tokens_estimate = plan.prompt_tokens_estimate if plan is not None else 0
        self.whole = (
            scope.whole
            and backend.answers_whole
            and not (plan is not None and plan.hedging.enabled)
        )
        self._backend = backend
        self._recorder = recorder
        self._on_ready = on_ready
        self._timer = ReadTimer(None)
        # min() of Deadlines, on their floats (the earlier one; the attempt's own on a tie).
        deadline = scope.deadline
        attempt_at = self.started_at + timeouts.attempt
        self._attempt_deadline = deadline if deadline.at < attempt_at else Deadline(attempt_at)
        if self.whole:
            self._first_token_at = NO_DEADLINE
            self._first_deadline = self._attempt_deadline
        else:
            first_at = self.started_at + timeouts.first_token
            self._first_token_at = Deadline(first_at)
            self._first_deadline = (
                self._attempt_deadline
                if self._attempt_deadline.at < first_at
                else self._first_token_at
            )
        self._stream: AsyncIterator[Batch] | None = None
        self._handed_over: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ran = False
        # The stream ended without output or error while opening: recorded (as a success)
        # once the request knows whether it won.
        self.ended_clean = False
        self.span: Span | None = None  # while tracing is on (router.tracing)

    @property
    def deployment(self) -> str:
        return self.candidate.deployment.name

    @property
    def has_output(self) -> bool:
        """True once the attempt can win: output began, or it ended without error."""
        return self.first_output_at is not None or self.ended_clean

    @property
    def ttft_s(self) -> float | None:
        if self.first_output_at is None or self.whole:
            return None
        return self.first_output_at - self.started_at

    @property
    def running_task(self) -> asyncio.Task[None] | None:
        """The attempt's own task while it runs (None: opened in the caller's, or over)."""
        task = self._task
        return task if task is not None and not task.done() else None

    @property
    def over(self) -> bool:
        """Recorded, its stream closed and no task left running: `close()` has nothing
        to do."""
        task = self._task
        return self.record is not None and self._stream is None and (task is None or task.done())

    def open(self) -> Awaitable[None]:
        """Runs the opening in the caller's task (await it); done once the attempt can
        win (`has_output`) or has failed (`error`, recorded). A cancelled caller closes
        the stream and records the attempt before the cancellation propagates. (A plain
        function returning the opening's coroutine: one frame less on every resume.)"""
        self._recorder.begin(self)
        return self._open()

    def start(self) -> None:
        self._recorder.begin(self)
        tracer = self._recorder.tracer
        self._task = asyncio.create_task(
            self._race(),
            name=f"attempt-{self.scope.request_id}-{self.number}",
            context=None if tracer is None else tracer.attempt_context(self),
        )
        self._task.add_done_callback(self._cancelled)

    def take_over(self) -> None:
        """The request's task reads the stream from now on (the attempt won)."""
        if self._handed_over is not None and not self._handed_over.done():
            self._handed_over.set_result(None)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def read(self) -> Batch | None:
        """The winner's next output batch (content and tool calls, in order; empty when
        the batch held only usage or the finish), or None once the stream ended: then
        `error` says how, and the attempt is recorded."""
        if self.ended_clean:
            self._finish(Outcome.SUCCESS, None)
        stream = self._stream
        while self.record is None and stream is not None:
            try:
                with self._timer:  # StopAsyncIteration at the end, TimeoutError past the limit
                    batch = await anext(stream)
            except StopAsyncIteration:
                await self._end(None)
                return None
            except asyncio.CancelledError:
                await self._abandon()
                raise
            except Exception as exc:
                await self._end(self._error_of(exc))
                return None
            out = self._take(batch)
            if out or self.finish is not None:
                return out
        return None

    async def close(self) -> None:
        """Closes the stream and records the attempt as cancelled, unless it already
        ended. Waits for the attempt's task when it still runs."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
        if not self.over:
            await self._abandon()

    def abandon(self) -> None:
        """`close()` without waiting: records the attempt (cancelled, unless it ended) and
        cancels its task; the stream, if still open, is left to its finalizer."""
        self.cancel()
        self._timer.cancel()
        self._finish(Outcome.SUCCESS if self.ended_clean else Outcome.CANCELLED, None)

    # -- the opening ----------------------------------------------------------------------

    async def _race(self) -> None:
        """The opening in the attempt's own task, then the wait for the request's verdict."""
        await self._open()
        assert self._on_ready is not None, "a started attempt reports to on_ready"
        if self.first_output_at is None:
            self._on_ready(self)  # failed (recorded) or ended clean
            return
        self._handed_over = asyncio.get_running_loop().create_future()
        self._on_ready(self)
        try:
            await self._handed_over
        except asyncio.CancelledError:
            await self._abandon()  # lost the race: close the upstream, record
            raise

    async def _open(self) -> None:
        """Opens the stream and reads to the first output, its end or a failure."""
        deployment = self.candidate.deployment
        generate = adapter_service_pb2.GenerateRequest(
            input=self.scope.request,
            provider_model=deployment.model,
            deployment=deployment.name,
            whole=self.whole,
        )
        self._ran = True
        self._timer.reschedule(self._first_deadline.loop_at())
        try:
            # Inside the try: a backend may refuse before returning a stream, and that must
            # end the attempt (record, signal) like any failure.
            stream = self._stream = self._backend.chat(generate, self.scope.deadline)
            timer = self._timer
            while True:
                with timer:  # StopAsyncIteration at the end, TimeoutError past the limit
                    batch = await anext(stream)
                out = self._take(batch)
                if out:
                    break
        except StopAsyncIteration:
            await self._aclose_stream()
            self.ended_clean = True
        except asyncio.CancelledError:
            await self._abandon()
            raise
        except Exception as exc:
            await self._end(self._error_of(exc))
        else:
            self.first_output_at = time.monotonic()
            self.first_output = out
            if self._attempt_deadline is not self._first_deadline:  # else armed already
                self._timer.reschedule(self._attempt_deadline.loop_at())

    def _take(self, batch: Batch) -> Batch:
        """Keeps the bookkeeping of one batch; returns its output events."""
        out: Batch = []
        for event in batch:
            which = event.WhichOneof("event")
            if which == "content":
                self.output_chars += len(event.content.text)
                out.append(event)
            elif which == "tool_call":
                call = event.tool_call
                self.output_chars += len(call.arguments_delta) + len(call.name)
                out.append(event)
            elif which == "usage":
                self.usage = event.usage
            elif which == "finish":
                self.finish = event.finish
            # start / error: not a backend's to send.
        return out

    # -- the end -------------------------------------------------------------------------

    async def _end(self, error: MeshError | None) -> None:
        """The stream ended by itself (error None) or failed: close it, record it."""
        self.error = error
        try:
            await self._aclose_stream()
        finally:  # even when closing is cancelled: the permit and slots come back
            self._finish(outcome_of(error), error)

    async def _abandon(self) -> None:
        """The request let go of a live attempt (a loser, or the caller went away)."""
        try:
            await self._aclose_stream()
        finally:
            self._finish(Outcome.SUCCESS if self.ended_clean else Outcome.CANCELLED, None)

    async def _aclose_stream(self) -> None:
        """Closes the backend stream; a stream that fails to close is closed as far as the
        attempt goes (logged: the backend's bug, not the request's)."""
        self._timer.cancel()
        stream, self._stream = self._stream, None
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                log.exception("%s: closing the backend stream failed", self.deployment)

    def _finish(self, outcome: Outcome, error: MeshError | None) -> None:
        if self.record is not None:
            return
        self.ended_at = time.monotonic()
        # An attempt that never ran (a hedge cancelled before its task's first step) sent
        # nothing upstream, so it spent nothing.
        self.record = self._recorder.finish(
            self.scope, self, outcome, error, ended_at=self.ended_at, prompt_sent=self._ran
        )

    def _cancelled(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step (a hedge that lost in the loop turn it was
        # launched in) never runs its body, yet its end must be recorded, once, so its
        # breaker permit and in-flight count come back; nothing reached the upstream. So
        # must a task whose own cleanup was cut short by a second cancellation.
        if self.record is None and task.cancelled():
            self._finish(Outcome.CANCELLED, None)

    def _error_of(self, exc: Exception) -> MeshError:
        if isinstance(exc, TimeoutError):
            error = self._timeout_error()
        elif isinstance(exc, MeshError):
            error = exc
        else:  # a crashing backend is an upstream failure, not ours
            error = MeshError.of(
                Reason.BACKEND_CRASHED, f"{self.deployment}: {type(exc).__name__}: {exc}"
            )
        if error.reason is not Reason.CALLER_DEADLINE and self._callers_deadline(error):
            # Whoever noticed first (our timer or the adapter's own), the caller's deadline
            # ended this attempt: no verdict on the deployment's health. A remote timeout
            # while the caller still had time stays the upstream's.
            error = self._caller_deadline_error()
        return error

    def _callers_deadline(self, error: MeshError) -> bool:
        return error.code is grpc.StatusCode.DEADLINE_EXCEEDED and self.scope.deadline.expired()

    def _timeout_error(self) -> MeshError:
        # Which limit fired is decided from the limits, not from reading the clock again,
        # so it does not depend on how late the timer callback ran.
        limit = self._attempt_deadline if self.first_output_at is not None else self._first_deadline
        if self.scope.deadline <= limit:
            return self._caller_deadline_error()
        if self.first_output_at is None and self._first_token_at <= self._attempt_deadline:
            return MeshError.of(
                Reason.FIRST_TOKEN_TIMEOUT,
                f"{self.deployment}: no first token within the first-token timeout",
            )
        return MeshError.of(
            Reason.ATTEMPT_TIMEOUT, f"{self.deployment}: the attempt exceeded its timeout"
        )

    def _caller_deadline_error(self) -> MeshError:
        return MeshError.of(
            Reason.CALLER_DEADLINE, f"{self.deployment}: the caller's deadline passed"
        )
