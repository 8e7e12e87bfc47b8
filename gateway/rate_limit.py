"""OpenAI's `x-ratelimit-*` response headers from the router's RateLimitStatus."""

from __future__ import annotations

from collections.abc import Sequence

from imesh.v1 import events_pb2

Headers = tuple[tuple[bytes, bytes], ...]


def rate_limit_headers(status: events_pb2.RateLimitStatus) -> Headers:
    """The headers for the limits the tenant has (a limit of 0 is none)."""
    out: list[tuple[bytes, bytes]] = []
    if status.limit_requests:
        out += [
            (b"x-ratelimit-limit-requests", str(status.limit_requests).encode()),
            (b"x-ratelimit-remaining-requests", str(status.remaining_requests).encode()),
            (b"x-ratelimit-reset-requests", f"{status.reset_requests_seconds:.3f}s".encode()),
        ]
    if status.limit_tokens:
        out += [
            (b"x-ratelimit-limit-tokens", str(status.limit_tokens).encode()),
            (b"x-ratelimit-remaining-tokens", str(status.remaining_tokens).encode()),
            (b"x-ratelimit-reset-tokens", f"{status.reset_tokens_seconds:.3f}s".encode()),
        ]
    return tuple(out)


def start_headers(batch: Sequence[events_pb2.ChatEvent] | None) -> Headers:
    """The rate-limit headers a stream's first batch carries on its start event, if any."""
    for event in batch or ():
        if event.HasField("start"):
            return rate_limit_headers(event.start.rate_limit)
    return ()
