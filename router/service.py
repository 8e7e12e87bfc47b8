"""ChatRouter: the in-process ChatAPI, a pipeline authenticate → validate → plan → execute."""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence

import grpc

from adapters.backend import Backend
from imesh.api import CallContext
from imesh.errors import MeshError
from imesh.v1 import chat_pb2, chat_service_pb2, events_pb2
from router.auth import ApiKeyAuth
from router.breaker import BreakerState, CircuitBreaker
from router.config import Capability, MeshConfig
from router.executor import Executor
from router.planner import Planner
from router.recorder import Recorder, RecordSink
from router.stats import StatsRegistry
from router.validate import validate_chat_input

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
    owns them from then on and `aclose()` closes them. Breakers, stats and the planner
    are built here once and shared by every request.
    """

    def __init__(
        self,
        config: MeshConfig,
        backends: Mapping[str, Backend],
        *,
        sinks: Sequence[RecordSink] = (),
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        missing = sorted({d.provider for d in config.deployments} - set(backends))
        if missing:
            raise ValueError(f"no backend for providers: {', '.join(missing)}")
        self._config = config
        self._backends = dict(backends)
        self._clock = clock
        self._timeouts = config.router.timeouts
        self.breakers: dict[str, CircuitBreaker] = {
            d.name: CircuitBreaker(config.router.breaker, clock) for d in config.deployments
        }
        self.stats = StatsRegistry()
        rng = rng or random.Random()
        self._planner = Planner(config, self.breakers, self.stats, rng)
        self._auth = ApiKeyAuth(config.router.api_key_hashes)
        self._catalog = _catalog(config)
        self.recorder = Recorder(sinks)
        self._executor = Executor(
            self._backends, self.recorder, self._timeouts, clock=clock, rng=rng
        )

    async def ready(self) -> bool:
        """Some deployment can take traffic (its breaker is closed)."""
        return any(b.state is BreakerState.CLOSED for b in self.breakers.values())

    async def chat_stream(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncGenerator[events_pb2.ChatEvent, None]:
        request_id = ctx.request_id or uuid.uuid4().hex
        timeout = self._timeouts.request
        if ctx.timeout is not None:
            timeout = min(timeout, ctx.timeout)
        deadline = self._clock() + timeout
        self._auth.check(ctx.api_key)  # authenticate
        validate_chat_input(request)  # validate
        plan = self._planner.plan(request)  # plan
        if timeout <= 0:
            raise MeshError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "no time left for the call"
            )
        # execute + settle: the executor prices usage and records every attempt's end.
        events = self._executor.run(plan, request, request_id, deadline)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def chat(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> chat_service_pb2.ChatResponse:
        return await aggregate(self.chat_stream(request, ctx))

    async def list_models(self, ctx: CallContext) -> chat_service_pb2.ListModelsResponse:
        self._auth.check(ctx.api_key)
        response = chat_service_pb2.ListModelsResponse()
        response.CopyFrom(self._catalog)  # the static part, built once
        for info in response.deployments:
            info.breaker_state = self.breakers[info.name].state.to_proto()
        return response

    async def aclose(self) -> None:
        """Close every backend, even when one of them fails to close."""
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


async def aggregate(
    events: AsyncIterator[events_pb2.ChatEvent],
) -> chat_service_pb2.ChatResponse:
    """Folds a chat event stream into the unary answer (text joined, tool calls by index).
    A stream that ends in an error raises it (the error event is followed by the raise)."""
    response = chat_service_pb2.ChatResponse()
    response.message.role = chat_pb2.ROLE_ASSISTANT
    text: list[str] = []
    calls: dict[int, chat_pb2.ToolCall] = {}
    arguments: dict[int, list[str]] = {}
    try:
        async for event in events:
            which = event.WhichOneof("event")
            if which == "content":
                text.append(event.content.text)
            elif which == "tool_call":
                delta = event.tool_call
                call = calls.get(delta.index)
                if call is None:
                    call = calls[delta.index] = chat_pb2.ToolCall()
                    arguments[delta.index] = []
                if delta.id:
                    call.id = delta.id
                if delta.name:
                    call.name = delta.name
                arguments[delta.index].append(delta.arguments_delta)
            elif which == "start":
                response.request_id = event.start.request_id
                response.model = event.start.model
                response.deployment = event.start.deployment
                response.provider_model = event.start.provider_model
            elif which == "usage":
                response.usage.CopyFrom(event.usage)
            elif which == "finish":
                response.finish_reason = event.finish.reason
            elif which == "error":
                # The iterator raises the same error right after; nothing to fold.
                continue
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    if text:
        response.message.content.add(text="".join(text))
    for index in sorted(calls):
        call = calls[index]
        call.arguments_json = "".join(arguments[index])
        response.message.tool_calls.append(call)
    return response
