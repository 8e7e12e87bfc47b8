"""One attempt: a backend stream run in its own task, with first-token and attempt timeouts."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from adapters.backend import Backend
from imesh.errors import MeshError
from imesh.v1 import adapter_service_pb2, chat_pb2, events_pb2
from router.policies.base import Candidate
from router.recorder import CALLER_DEADLINE, AttemptRecord, Outcome, Recorder, outcome_of

# Events an attempt may hold before its consumer takes them; the backend waits beyond it.
QUEUE_SIZE = 64
# In a burst, hand the loop to the consumer after this many events.
YIELD_EVERY = 16


@dataclass(frozen=True, slots=True)
class AttemptLimits:
    """Absolute instants on the router's clock (None: no bound)."""

    first_token_at: float
    attempt_at: float
    request_at: float | None


class _End:
    """Queue sentinel: the attempt's stream ended (its record is set)."""


END = _End()


class Attempt:
    """Lifecycle: `start()` once; the task pushes events into `events` (bounded) and ends
    with END. `signals` (shared by the request's attempts) gets this attempt once, when it
    has its first output (content or tool call), finished without output, or failed before
    output. `cancel()` closes the backend iterator; `record` is set when the task ends.
    """

    def __init__(
        self,
        *,
        candidate: Candidate,
        backend: Backend,
        request: chat_pb2.ChatInput,
        number: int,
        hedge: bool,
        request_id: str,
        prompt_tokens_estimate: int,
        limits: AttemptLimits,
        recorder: Recorder,
        signals: asyncio.Queue[Attempt],
        clock: Callable[[], float],
    ) -> None:
        self.candidate = candidate
        self.number = number
        self.hedge = hedge
        self.events: asyncio.Queue[events_pb2.ChatEvent | _End] = asyncio.Queue(QUEUE_SIZE)
        self.error: MeshError | None = None
        self.record: AttemptRecord | None = None
        self.started_at = 0.0
        self.first_output_at: float | None = None
        self._backend = backend
        self._request = request
        self._request_id = request_id
        self._prompt_tokens_estimate = prompt_tokens_estimate
        self._limits = limits
        self._recorder = recorder
        self._signals = signals
        self._clock = clock
        self._signalled = False
        self._task: asyncio.Task[None] | None = None

    @property
    def deployment(self) -> str:
        return self.candidate.deployment.name

    @property
    def has_output(self) -> bool:
        """True once the attempt can win: output began, or it ended without error."""
        return self.first_output_at is not None or (self.record is not None and self.error is None)

    @property
    def task(self) -> asyncio.Task[None]:
        assert self._task is not None, "attempt not started"
        return self._task

    def start(self) -> None:
        self.started_at = self._clock()
        self._recorder.begin(self.candidate)
        self._task = asyncio.create_task(
            self._run(), name=f"attempt-{self._request_id}-{self.number}"
        )
        self._task.add_done_callback(lambda _: self.settle())

    def settle(self) -> None:
        """Records the end of an attempt whose task ended without running `_run`; a no-op
        otherwise. A task cancelled before its first step (a hedge that lost in the loop
        turn it was launched in) never runs its body, yet its end must be recorded, once,
        so its breaker slot and in-flight count come back. Nothing reached the upstream.
        Runs as the task's done callback, and from the executor's close (a task is done
        before its callbacks run)."""
        if self.record is None and self._task is not None and self._task.done():
            self._finish(Outcome.CANCELLED, None, None, 0, prompt_sent=False)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _signal(self) -> None:
        if not self._signalled:
            self._signalled = True
            self._signals.put_nowait(self)

    async def _run(self) -> None:
        deployment = self.candidate.deployment
        generate = adapter_service_pb2.GenerateRequest(
            input=self._request, provider_model=deployment.model, deployment=deployment.name
        )
        usage: events_pb2.Usage | None = None
        chars = 0
        relayed = 0
        outcome = Outcome.CANCELLED
        error: MeshError | None = None
        limits = self._limits
        loop = asyncio.get_running_loop()
        try:
            # Inside the try: a backend may refuse before returning a stream, and that must
            # end the attempt (signal, record) like any failure, not kill the task silently.
            stream = self._backend.chat(generate, limits.request_at)
            try:
                first_at = _earliest(limits.first_token_at, limits.attempt_at, limits.request_at)
                async with asyncio.timeout_at(self._loop_at(loop, first_at)) as timer:
                    async for event in stream:
                        which = event.WhichOneof("event")
                        if which == "usage":
                            usage = event.usage
                        elif which == "content":
                            chars += len(event.content.text)
                        elif which == "tool_call":
                            chars += len(event.tool_call.arguments_delta) + len(
                                event.tool_call.name
                            )
                        first = self.first_output_at is None and which in ("content", "tool_call")
                        if first:
                            self.first_output_at = self._clock()
                            rest = _earliest(limits.attempt_at, limits.request_at)
                            timer.reschedule(self._loop_at(loop, rest))
                            self._signal()
                        await self.events.put(event)
                        relayed += 1
                        if first or relayed % YIELD_EVERY == 0:
                            # A burst read in one go never suspends the loop by itself: let
                            # the consumer send the first token now, and keep the rest from
                            # starving it.
                            await asyncio.sleep(0)
            except TimeoutError:
                error = self._timeout_error()
            finally:
                await _aclose(stream)
            outcome = outcome_of(error)
        except MeshError as exc:
            error = exc
            outcome = outcome_of(exc)
        except asyncio.CancelledError:
            self._finish(Outcome.CANCELLED, None, usage, chars)
            raise
        except Exception as exc:  # a crashing backend is an upstream failure, not ours
            error = MeshError(
                grpc.StatusCode.INTERNAL, "BACKEND_CRASHED", f"{type(exc).__name__}: {exc}"
            )
            outcome = Outcome.FAILURE
        if (
            error is not None
            and error.code is grpc.StatusCode.DEADLINE_EXCEEDED
            and limits.request_at is not None
            and self._clock() >= limits.request_at
        ):
            # Whoever noticed first (our timer or the adapter's own), the caller's deadline
            # ended this attempt: no verdict on the deployment's health.
            error = self._caller_deadline_error()
        self.error = error
        self._finish(outcome, error, usage, chars)
        self._signal()
        await self.events.put(END)

    def _finish(
        self,
        outcome: Outcome,
        error: MeshError | None,
        usage: events_pb2.Usage | None,
        chars: int,
        *,
        prompt_sent: bool = True,
    ) -> None:
        now = self._clock()
        ttft = None if self.first_output_at is None else self.first_output_at - self.started_at
        self.record = self._recorder.finish(
            self.candidate,
            request_id=self._request_id,
            model=self._request.model,
            attempt=self.number,
            hedge=self.hedge,
            outcome=outcome,
            error=error,
            latency_s=now - self.started_at,
            ttft_s=ttft,
            reported_usage=usage,
            prompt_tokens_estimate=self._prompt_tokens_estimate if prompt_sent else 0,
            output_chars=chars,
        )

    def _timeout_error(self) -> MeshError:
        # Which limit fired is decided from the limits, not from reading the clock again,
        # so it does not depend on how late the timer callback ran.
        limits = self._limits
        name = self.deployment
        before_output = self.first_output_at is None
        earliest = (
            _earliest(limits.first_token_at, limits.attempt_at, limits.request_at)
            if before_output
            else _earliest(limits.attempt_at, limits.request_at)
        )
        if limits.request_at is not None and limits.request_at <= earliest:
            return self._caller_deadline_error()
        if before_output and limits.first_token_at <= earliest:
            return MeshError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "FIRST_TOKEN_TIMEOUT",
                f"{name}: no first token within the first-token timeout",
            )
        return MeshError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "ATTEMPT_TIMEOUT",
            f"{name}: the attempt exceeded its timeout",
        )

    def _caller_deadline_error(self) -> MeshError:
        return MeshError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            CALLER_DEADLINE,
            f"{self.deployment}: the caller's deadline passed",
        )

    def _loop_at(self, loop: asyncio.AbstractEventLoop, at: float) -> float | None:
        if math.isinf(at):
            return None
        return loop.time() + (at - self._clock())


def _earliest(*instants: float | None) -> float:
    return min((t for t in instants if t is not None), default=math.inf)


async def _aclose(stream: AsyncIterator[events_pb2.ChatEvent]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
