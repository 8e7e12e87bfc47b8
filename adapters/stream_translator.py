"""StreamTranslator: one provider's SSE events into ChatEvents, for one call; and the
per-call state every translator keeps (what it saw, whether output began or ended)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from adapters.sse import SSEEvent
from adapters.usage_estimate import TokenCounter
from imesh.v1 import chat_pb2, events_pb2


class StreamTranslator(Protocol):
    """Turns one provider's SSE events into ChatEvents for one call."""

    @property
    def output_started(self) -> bool:
        """True once a content or tool-call event was produced."""

    @property
    def done(self) -> bool:
        """True once the provider's terminal event arrived."""

    def feed(self, event: SSEEvent) -> list[events_pb2.ChatEvent]:
        """Events for one SSE event; raises MeshError for an in-stream provider error."""

    async def final_events(self) -> list[events_pb2.ChatEvent]:
        """The closing usage and finish events of a complete stream."""

    async def partial_usage(self) -> events_pb2.Usage:
        """What is known of usage now: the provider's, or an estimate flagged so."""


class TranslatorState:
    """What every translator tracks for one call. `_seen` keeps the completion text for a
    local count if the provider's usage never comes (bounded by the completion itself)."""

    def __init__(
        self,
        chat: chat_pb2.ChatInput,
        counter: TokenCounter,
        *,
        provider: str,
        secrets: Sequence[str],
    ) -> None:
        self._chat = chat
        self._counter = counter
        self._provider = provider
        self._secrets = secrets
        self._seen: list[str] = []
        self._started = False
        self._done = False

    @property
    def output_started(self) -> bool:
        return self._started

    @property
    def done(self) -> bool:
        return self._done

    async def _estimate(self) -> events_pb2.Usage:
        return await self._counter.estimate(self._chat, self._seen)
