"""ChatAPI: the one interface to the mesh's chat service, local or remote.

`imesh.Client` implements it over a gRPC channel; the router implements it in-process
(`router.service.ChatRouter`), so the REST edge calls either without knowing which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from imesh.v1 import chat_pb2, chat_service_pb2, events_pb2, usage_service_pb2


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling and within what time: the caller's key, request id and deadline.

    `timeout` is seconds from now; None means no deadline beyond the router's own limits.
    """

    api_key: str | None = None
    request_id: str | None = None
    timeout: float | None = None


class ChatAPI(Protocol):
    """Lifecycle: build once, share across requests, `aclose()` at shutdown.

    `chat_stream` yields events in order (start, deltas, usage, finish). A failure before
    any event raises `imesh.errors.MeshError`; a failure after the start yields a final
    `error` event (with partial usage) and then raises the same MeshError. Closing the
    iterator early (`aclose()`) cancels the call all the way to the upstream.
    """

    def chat_batches(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncIterator[Sequence[events_pb2.ChatEvent]]:
        """The stream as it travels: each batch holds the events that were ready together
        (one upstream read, one gRPC message), in order; the first output is never held
        back. A batch ending in an `error` event is the last; the error is raised after it."""
        ...

    def chat_stream(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncIterator[events_pb2.ChatEvent]: ...

    async def chat(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> chat_service_pb2.ChatResponse: ...

    async def list_models(self, ctx: CallContext) -> chat_service_pb2.ListModelsResponse: ...

    async def ready(self) -> bool:
        """The mesh can take traffic now: the router answers and some deployment's breaker
        is closed. Needs no key: readiness probes carry none."""
        ...

    async def aclose(self) -> None: ...


class UsageAPI(Protocol):
    """A tenant's rolled-up usage, served in-process by the router's tenancy and over gRPC
    (imesh.v1.UsageService) by `imesh.Client`. The caller's key names the tenant; no
    caller sees another tenant's usage. Raises MeshError (UNAUTHENTICATED without a valid
    key; UNIMPLEMENTED where the mesh runs without tenancy)."""

    async def get_usage(
        self, request: usage_service_pb2.GetUsageRequest, ctx: CallContext
    ) -> usage_service_pb2.GetUsageResponse: ...
