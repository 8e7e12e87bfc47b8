"""StreamTranslator: one provider's SSE events into ChatEvents, for one call; and the
per-call state every translator keeps (what it saw, whether output began or ended)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from adapters.http_errors import upstream_malformed
from adapters.sse import SSEEvent
from adapters.token_estimate import TokenCounter
from imesh.errors import MeshError
from imesh.v1 import chat_pb2, events_pb2

# What decoding a body of the wrong shape raises: bad JSON or bad UTF-8 (ValueError), or
# valid JSON with a null, list or string where an object or number belongs (TypeError,
# AttributeError). All are the provider's fault, never ours.
MALFORMED = (ValueError, TypeError, AttributeError)


def content_event(text: str) -> events_pb2.ChatEvent:
    """A content delta. Setting the field in place costs a sixth of building a
    ContentDelta and copying it into a new ChatEvent (measured: 0.35 µs against 2.1 µs),
    and this runs once per relayed token."""
    event = events_pb2.ChatEvent()
    event.content.text = text
    return event


def tool_call_event(
    index: int, *, id: str = "", name: str = "", arguments_delta: str = ""
) -> events_pb2.ChatEvent:
    """A tool-call delta, built in place like `content_event`."""
    event = events_pb2.ChatEvent()
    piece = event.tool_call
    piece.index = index
    if id:
        piece.id = id
    if name:
        piece.name = name
    if arguments_delta:
        piece.arguments_delta = arguments_delta
    return event


class StreamTranslator(Protocol):
    """Turns one provider's SSE events into ChatEvents for one call."""

    @property
    def output_started(self) -> bool:
        """True once a content or tool-call event was produced."""

    @property
    def done(self) -> bool:
        """True once the provider's terminal event arrived."""

    def translate(
        self, events: list[SSEEvent]
    ) -> tuple[list[events_pb2.ChatEvent], MeshError | None]:
        """The ChatEvents of one read's SSE events, in one pass, and the failure that
        stopped the pass, if any (the events before it are kept)."""

    async def final_events(self) -> list[events_pb2.ChatEvent]:
        """The closing usage and finish events of a complete stream."""

    async def partial_usage(self) -> events_pb2.Usage:
        """What is known of usage now: the provider's, or an estimate flagged so."""


class TranslatorState:
    """What every translator tracks for one call, and the one `translate` loop; a
    subclass implements `feed(event, out)`. `_seen` keeps the completion text for a local
    count if the provider's usage never comes (bounded by the completion itself)."""

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
        self._begin()

    def _begin(self) -> None:
        """A subclass's own per-call state, set up after the shared state."""

    @property
    def output_started(self) -> bool:
        return self._started

    @property
    def done(self) -> bool:
        return self._done

    def translate(
        self, events: list[SSEEvent]
    ) -> tuple[list[events_pb2.ChatEvent], MeshError | None]:
        out: list[events_pb2.ChatEvent] = []
        try:
            for event in events:
                if self._done:
                    break  # past the terminal event nothing counts
                self.feed(event, out)
        except MeshError as err:
            return out, err
        except MALFORMED:
            return out, upstream_malformed(self._provider)
        finally:
            if out:
                self._started = True
        return out, None

    def feed(self, event: SSEEvent, out: list[events_pb2.ChatEvent]) -> None:
        """Appends the ChatEvents of one SSE event to `out`; raises MeshError for an
        in-stream provider error."""
        raise NotImplementedError

    async def _estimate(self) -> events_pb2.Usage:
        return await self._counter.estimate(self._chat, self._seen)
