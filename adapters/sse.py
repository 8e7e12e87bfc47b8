"""Incremental server-sent-events parser over a stream of decoded lines (WHATWG rules)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. `event` is "message" when the stream named none."""

    event: str
    data: str
    id: str | None = None


async def iter_sse(lines: AsyncIterator[str]) -> AsyncGenerator[SSEEvent, None]:
    """Events from lines without their terminators (httpx `aiter_lines()` splits on
    \\n, \\r\\n and \\r). A blank line dispatches; an event still open at end of input is
    dropped, as the spec says, so a cut stream never yields a half event."""
    event = ""
    data: list[str] = []
    last_id: str | None = None
    async for line in lines:
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
        # "retry" and unknown fields are ignored: we never reconnect a chat stream.
