"""Incremental server-sent-events parser over bytes, one socket read at a time (WHATWG rules).

`SSEParser.feed(chunk)` returns every event the bytes so far complete and keeps the
unfinished tail for the next read, so all the events one read delivers are parsed in one
synchronous pass. `data` stays bytes: the JSON decoder reads it without a str copy.
"""

from __future__ import annotations

from typing import NamedTuple


class SSEEvent(NamedTuple):
    """One dispatched event. `event` is "message" when the stream named none. A tuple:
    one is built per relayed token, at a quarter of a frozen dataclass's cost."""

    event: str
    data: bytes
    id: str | None = None


class SSEParser:
    """Lifecycle: one per response; `feed` each read in order. An event still open when
    the body ends is dropped, as the spec says, so a cut stream never yields a half event."""

    __slots__ = ("_last_id", "_pending_cr", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._last_id: str | None = None
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr:
            # A \r ended the previous read: a \n opening this one belongs to it.
            self._pending_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._pending_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._tail + chunk if self._tail else chunk
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._tail = buffer
            return []
        self._tail = buffer[end + 2 :]
        out: list[SSEEvent] = []
        for block in buffer[:end].split(b"\n\n"):
            if block.startswith(b"data: ") and b"\n" not in block:
                # The common shape (one data line, unnamed): no field loop.
                out.append(SSEEvent("message", block[6:], self._last_id))
            elif block:
                event = self._event(block)
                if event is not None:
                    out.append(event)
        return out

    def _event(self, block: bytes) -> SSEEvent | None:
        name = ""
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if not line or line.startswith(b":"):
                continue  # a blank line inside "\n\n\n" runs, or a comment / keep-alive
            field, colon, value = line.partition(b":")
            if colon and value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                data.append(value)
            elif field == b"event":
                name = value.decode("utf-8", "replace")
            elif field == b"id" and b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace")
            # "retry" and unknown fields are ignored: we never reconnect a chat stream.
        if not data:
            return None
        return SSEEvent(name or "message", b"\n".join(data), self._last_id)
