"""The Backend seam: one interface for every adapter, in-process or behind gRPC."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from adapters.deadline import Deadline
from imesh.v1 import adapter_service_pb2, events_pb2

Batch = list[events_pb2.ChatEvent]


class Backend(abc.ABC):
    """Turns one chat call into a provider's API and back into typed events.

    Lifecycle: built once from its provider config, shared by all deployments that name
    that provider, `aclose()`d at shutdown (closes connection pools).

    `chat` yields BATCHES: each list holds the events one upstream read delivered,
    translated in one synchronous pass (never empty; the first output is never held back
    behind a later read). Events are `content`, `tool_call`, `usage` and `finish` (never
    `start` or `error`; the router adds those). The last `usage` event is the attempt's
    usage.

    Failure contract: on failure `chat` raises `imesh.errors.MeshError` whose `Reason`
    tells the router what to do (see `imesh.errors.classify`). When output had begun, it
    first yields a batch with the usage it knows (provider-reported, or an estimate with
    `estimated=True`), and the error carries the same usage. Closing the iterator (the
    router cancels or `aclose()`s it) closes the upstream call at once and returns its
    connection to the pool or drops it; nothing is left open.

    `deadline` bounds the whole call; past it the call ends with DEADLINE_EXCEEDED.

    `request.whole` says the caller wants the whole answer at once. A backend whose
    `answers_whole` is True then makes one non-streaming upstream call and yields the
    answer as one batch (same events, same failure contract); any other backend streams.
    """

    # True when `chat` honours `request.whole` (the router then bounds such a call by its
    # attempt timeout: the first output is the whole answer).
    answers_whole: bool = False

    @abc.abstractmethod
    def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release pooled connections."""
