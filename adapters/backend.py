"""The Backend seam: one interface for every adapter, in-process or behind gRPC."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from imesh.v1 import adapter_service_pb2, events_pb2


class Backend(abc.ABC):
    """Turns one chat call into a provider's API and back into typed events.

    Lifecycle: built once from its provider config, shared by all deployments that name
    that provider, `aclose()`d at shutdown (closes connection pools).

    `chat` yields `content`, `tool_call`, `usage` and `finish` events (never `start` or
    `error`; the router adds those). The last `usage` event is the attempt's usage. On
    failure it raises `imesh.errors.MeshError` with a gRPC code the router acts on
    (UNAVAILABLE, RESOURCE_EXHAUSTED with `retry_after`, DEADLINE_EXCEEDED, ...); when
    output had begun, it first yields the usage it knows (provider-reported, or an
    estimate with `estimated=True`). Closing the iterator (the router cancels or
    `aclose()`s it) must close the upstream call at once.

    `deadline` is an absolute `time.monotonic()` instant, or None.
    """

    @abc.abstractmethod
    def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: float | None
    ) -> AsyncIterator[events_pb2.ChatEvent]: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release pooled connections."""
