"""ChatRouter: the in-process ChatAPI, a pipeline of named stages over one RequestScope:
authenticate -> admit -> plan -> execute -> settle."""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping, Sequence

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from imesh.api import CallContext
from imesh.errors import MeshError, Reason
from imesh.v1 import chat_pb2, chat_service_pb2, events_pb2
from router.admission import Admitter, ConcurrencyLimiter, Ticket, admit_all
from router.auth import ApiKeyAuth, Authenticator
from router.breaker import BreakerState, CircuitBreaker
from router.closer import Closer
from router.config import Capability, MeshConfig
from router.executor import Executor, Run
from router.planner import Planner
from router.recorder import Recorder, RecordSink, RequestOutcome
from router.scope import ANONYMOUS, RequestScope
from router.stats import StatsRegistry
from router.tracing import RouterTracer
from router.validate import validate_chat_input_off_loop, validate_small_chat_input

log = logging.getLogger(__name__)

_CAPABILITY_PROTO: Mapping[Capability, chat_pb2.Capability.ValueType] = {
    "tools": chat_pb2.CAPABILITY_TOOLS,
    "vision": chat_pb2.CAPABILITY_VISION,
    "json_schema": chat_pb2.CAPABILITY_JSON_SCHEMA,
    "streaming": chat_pb2.CAPABILITY_STREAMING,
}


class ChatRouter:
    """The router behind ChatService, callable in-process (the REST edge in `imesh up`).

    Lifecycle: build once from the config and the Backends (keyed by provider name); it
    owns them from then on and `aclose()` closes them. Breakers, stats, the planner and
    the admitters are built here once and shared by every request. `admitters` run after
    the router's own concurrency limit, in order (tenancy plugs in there).
    """

    def __init__(
        self,
        config: MeshConfig,
        backends: Mapping[str, Backend],
        *,
        sinks: Sequence[RecordSink] = (),
        authenticator: Authenticator | None = None,
        admitters: Sequence[Admitter] = (),
        tracer: RouterTracer | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        missing = sorted({d.provider for d in config.deployments} - set(backends))
        if missing:
            raise ValueError(f"no backend for providers: {', '.join(missing)}")
        self._config = config
        self._backends = dict(backends)
        self._timeouts = config.router.timeouts
        self.breakers: dict[str, CircuitBreaker] = {
            d.name: CircuitBreaker(config.router.breaker, clock) for d in config.deployments
        }
        self.stats = StatsRegistry()
        rng = rng or random.Random()
        self._planner = Planner(config, self.breakers, self.stats, rng)
        self._auth: Authenticator = authenticator or ApiKeyAuth(config.router.api_key_hashes)
        self.limiter = ConcurrencyLimiter(config.router.admission)
        self._admitters: tuple[Admitter, ...] = (self.limiter, *admitters)
        self._catalog = _catalog(config)
        self.recorder = Recorder(sinks, tracer)
        self._closer = Closer()
        self._executor = Executor(
            self._backends,
            self.recorder,
            self._timeouts,
            rng=rng,
            overloaded_retry_after_s=config.router.admission.retry_after_s,
        )

    async def ready(self) -> bool:
        """Some deployment can take traffic (its breaker is closed)."""
        return any(b.state is BreakerState.CLOSED for b in self.breakers.values())

    def chat_batches(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncGenerator[Batch, None]:
        """The primary path: batches as the winner's upstream delivered them. The first
        holds start and the first output, never held back; the last holds usage and
        finish (or the error event, then the error is raised)."""
        return self._batches(request, ctx)

    async def _batches(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncGenerator[Batch, None]:
        call = self._call(request, ctx, whole=False)  # at the first iteration, not before
        try:
            batch: Batch | None = await self._first_batch(call)
            run = call.run
            assert run is not None
            while batch is not None:
                yield batch
                if run.final_sent:
                    break  # the answer is complete: the rest is bookkeeping, deferred
                batch = await run.next_batch()
            call.outcome = RequestOutcome.SUCCESS
        except BaseException as exc:
            call.failed(exc)
            raise
        finally:
            await self._settle_stage(call)

    async def _settle_stage(self, call: _Call) -> None:
        """Settle, however the call ended: a served answer's bookkeeping is deferred until
        after the answer left; anything else is closed and settled now."""
        if call.outcome is RequestOutcome.SUCCESS:
            self._after_answer(call)
        else:
            await self._unserved(call)

    def _call(self, request: chat_pb2.ChatInput, ctx: CallContext, *, whole: bool) -> _Call:
        timeout = self._timeouts.request
        if ctx.timeout is not None:
            timeout = min(timeout, ctx.timeout)
        scope = RequestScope(
            request_id=ctx.request_id or uuid.uuid4().hex,
            caller=ANONYMOUS,
            request=request,
            deadline=Deadline.after(timeout),
            whole=whole,
        )
        self.recorder.begin_request(scope)
        return _Call(scope, ctx.api_key, timeout)

    async def _first_batch(self, call: _Call) -> Batch:
        """The stages up to the answer's first batch: authenticate -> admit -> plan ->
        execute (the first batch). What the settle stage needs is kept in `call` as it
        is made (the ticket, the run), whichever way this ends."""
        scope = call.scope
        request = scope.request
        scope.caller = await self._auth.authenticate(call.api_key)  # authenticate
        if not validate_small_chat_input(request):
            await validate_chat_input_off_loop(request)
        call.ticket = await admit_all(self._admitters, scope)  # admit
        plan = self._planner.plan(request, scope.prompt_tokens_estimate)  # plan
        scope.plan = plan
        if call.timeout <= 0:
            raise MeshError.of(Reason.CALLER_DEADLINE, "no time left for the call")
        run = call.run = self._executor.run(scope, plan)  # execute
        batch = await run.first_batch()
        if batch and scope.rate_limit is not None and batch[0].HasField("start"):
            batch[0].start.rate_limit.CopyFrom(scope.rate_limit)
        return batch

    async def _unserved(self, call: _Call) -> None:
        """Ends a request that was not served (failed, refused or cancelled): every
        attempt ended and recorded, then settled."""
        try:
            if call.run is not None:
                await call.run.close()  # every attempt ended and recorded
        finally:  # even when closing was cut short: the ticket must not leak
            self._settle(call.scope, call.ticket, call.outcome, call.error)  # settle

    def _after_answer(self, call: _Call) -> None:
        """Ends a served request off the caller's path: the winner read to its end, every
        attempt closed and recorded, then settled, once (also when the caller is
        cancelled meanwhile: this runs in the closer's task, not the caller's)."""
        scope, run, ticket = call.scope, call.run, call.ticket
        assert run is not None

        async def close() -> None:
            try:
                await run.finish()
            finally:  # even when closing was cut short: the ticket must not leak
                self._settle(scope, ticket, RequestOutcome.SUCCESS, None)  # settle

        def abandon() -> None:
            run.abandon()
            self._settle(scope, ticket, RequestOutcome.SUCCESS, None)

        self._closer.defer(close, abandon=abandon)

    def _settle(
        self,
        scope: RequestScope,
        ticket: Ticket | None,
        outcome: RequestOutcome,
        error: MeshError | None,
    ) -> None:
        record = self.recorder.finish_request(scope, outcome, error, ended_at=time.monotonic())
        if ticket is not None:
            if scope.attempts:
                ticket.settle(record.usage)
            else:
                ticket.release()

    async def chat_stream(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncGenerator[events_pb2.ChatEvent, None]:
        """`chat_batches` flattened, for callers that want one event at a time."""
        batches = self.chat_batches(request, ctx)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for event in batch:
                    yield event

    async def chat(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> chat_service_pb2.ChatResponse:
        """The unary answer. Backends that can are asked for the whole answer in one
        non-streaming upstream call (cheaper than a stream for a caller that waits for
        the end anyway: bench/results/transports.md); the answer is the same.

        The stages of `chat_batches` in a plain coroutine that folds each batch as it
        comes (no async generator between them: asyncio registers every one)."""
        call = self._call(request, ctx, whole=True)
        answer = _Answer()
        try:
            batch: Batch | None = await self._first_batch(call)
            run = call.run
            assert run is not None
            while batch is not None:
                answer.fold(batch)
                if run.final_sent:
                    break  # the answer is complete: the rest is bookkeeping, deferred
                batch = await run.next_batch()  # raises after an error event
            call.outcome = RequestOutcome.SUCCESS
        except BaseException as exc:
            call.failed(exc)
            raise
        finally:
            await self._settle_stage(call)
        return answer.response()

    async def list_models(self, ctx: CallContext) -> chat_service_pb2.ListModelsResponse:
        await self._auth.authenticate(ctx.api_key)
        response = chat_service_pb2.ListModelsResponse()
        response.CopyFrom(self._catalog)  # the static part, built once
        for info in response.deployments:
            info.breaker_state = self.breakers[info.name].state.to_proto()
        return response

    async def settled(self) -> None:
        """Waits until every request answered so far is settled (recorded, its ticket
        settled): served requests settle right after their answer left."""
        await self._closer.drain()

    async def aclose(self) -> None:
        """Settle every answered request, then close every backend, even when one of
        them fails to close."""
        await self._closer.drain()
        for name, backend in self._backends.items():
            try:
                await backend.aclose()
            except Exception:
                log.exception("closing the backend of provider %s failed", name)


def _catalog(config: MeshConfig) -> chat_service_pb2.ListModelsResponse:
    """Aliases and deployments as ListModels reports them, minus the live breaker states."""
    return chat_service_pb2.ListModelsResponse(
        aliases=[
            chat_service_pb2.ModelAlias(
                name=name, candidates=list(spec.candidates), policy=spec.policy
            )
            for name, spec in config.aliases.items()
        ],
        deployments=[
            chat_service_pb2.DeploymentInfo(
                name=d.name,
                provider=d.provider,
                provider_model=d.model,
                context_window=d.context_window,
                capabilities=sorted(_CAPABILITY_PROTO[c] for c in d.capabilities),
                price=chat_service_pb2.Price(
                    input_micros_per_mtok=d.price.input_micros,
                    output_micros_per_mtok=d.price.output_micros,
                    cached_input_micros_per_mtok=d.price.cached_input_micros,
                ),
                weight=d.weight,
            )
            for d in config.deployments
        ],
    )


class _Call:
    """One request's state between its stages and the settle stage: the scope, what the
    admit and execute stages handed out (released or closed whichever way it ends), and
    how it ended."""

    __slots__ = ("api_key", "error", "outcome", "run", "scope", "ticket", "timeout")

    def __init__(self, scope: RequestScope, api_key: str | None, timeout: float) -> None:
        self.scope = scope
        self.api_key = api_key
        self.timeout = timeout
        self.ticket: Ticket | None = None
        self.run: Run | None = None
        self.outcome = RequestOutcome.CANCELLED  # until it is known to be otherwise
        self.error: MeshError | None = None

    def failed(self, exc: BaseException) -> None:
        """The request ended by `exc`: a failure, or (not an Exception: the caller went
        away) still a cancellation. Anything but a MeshError fails as INTERNAL."""
        if isinstance(exc, MeshError):
            self.outcome, self.error = RequestOutcome.FAILURE, exc
        elif isinstance(exc, Exception):
            self.outcome = RequestOutcome.FAILURE
            self.error = MeshError.of(Reason.INTERNAL, f"{type(exc).__name__}: {exc}")


class _Answer:
    """The unary answer folded from event batches: text joined, tool calls by index."""

    __slots__ = ("_arguments", "_calls", "_response", "_text")

    def __init__(self) -> None:
        self._response = chat_service_pb2.ChatResponse()
        self._response.message.role = chat_pb2.ROLE_ASSISTANT
        self._text: list[str] = []
        self._calls: dict[int, chat_pb2.ToolCall] = {}
        self._arguments: dict[int, list[str]] = {}

    def fold(self, batch: Sequence[events_pb2.ChatEvent]) -> None:
        response = self._response
        for event in batch:
            which = event.WhichOneof("event")
            if which == "content":
                self._text.append(event.content.text)
            elif which == "tool_call":
                delta = event.tool_call
                call = self._calls.get(delta.index)
                if call is None:
                    call = self._calls[delta.index] = chat_pb2.ToolCall()
                    self._arguments[delta.index] = []
                if delta.id:
                    call.id = delta.id
                if delta.name:
                    call.name = delta.name
                self._arguments[delta.index].append(delta.arguments_delta)
            elif which == "start":
                start = event.start
                response.request_id = start.request_id
                response.model = start.model
                response.deployment = start.deployment
                response.provider_model = start.provider_model
                if start.HasField("rate_limit"):
                    response.rate_limit.CopyFrom(start.rate_limit)
            elif which == "usage":
                response.usage.CopyFrom(event.usage)
            elif which == "finish":
                response.finish_reason = event.finish.reason
            # error: the stream raises the same error right after; nothing to fold.

    def response(self) -> chat_service_pb2.ChatResponse:
        response = self._response
        if self._text:
            response.message.content.add(text="".join(self._text))
        for index in sorted(self._calls):
            call = self._calls[index]
            call.arguments_json = "".join(self._arguments[index])
            response.message.tool_calls.append(call)
        return response


async def aggregate(
    batches: AsyncIterable[Sequence[events_pb2.ChatEvent]],
) -> chat_service_pb2.ChatResponse:
    """Folds a stream of event batches into the unary answer (text joined, tool calls by
    index). A stream that ends in an error raises it, partial usage included (the error
    event is followed by the raise)."""
    answer = _Answer()
    try:
        async for batch in batches:
            answer.fold(batch)
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()
    return answer.response()
