"""The one mapping from a provider's HTTP failure to MeshError, and retry-after parsing.

The router reads only the gRPC code, the reason and `retry_after`; nothing
provider-specific crosses this line. Messages are scrubbed of the deployment's key.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime

import orjson

from imesh.errors import MeshError, Reason
from imesh.v1 import events_pb2

# Read at most this much of an error body: enough for any provider's JSON error.
ERROR_BODY_LIMIT = 64 * 1024
# Keep an error message to this many UTF-8 bytes. A gRPC status travels in trailers, and a
# receiver drops trailers over its metadata limit (8 KiB soft, 16 KiB hard) whole, taking
# the reason and retry_after with them; the message goes twice (grpc-message, percent-
# encoded, and the details), so it must stay well below that.
MESSAGE_LIMIT_BYTES = 1024

# HTTP status -> reason (each reason has its gRPC code in imesh.errors).
_BY_STATUS: dict[int, Reason] = {
    400: Reason.UPSTREAM_BAD_REQUEST,
    401: Reason.UPSTREAM_AUTH,
    403: Reason.UPSTREAM_AUTH,
    404: Reason.UPSTREAM_MODEL_NOT_FOUND,
    408: Reason.UPSTREAM_TIMEOUT,
    413: Reason.UPSTREAM_BAD_REQUEST,
    422: Reason.UPSTREAM_BAD_REQUEST,
    429: Reason.UPSTREAM_RATE_LIMITED,
    500: Reason.UPSTREAM_UNAVAILABLE,
    502: Reason.UPSTREAM_UNAVAILABLE,
    503: Reason.UPSTREAM_UNAVAILABLE,
    504: Reason.UPSTREAM_TIMEOUT,
    529: Reason.UPSTREAM_OVERLOADED,
}

# Error `type`s that providers send inside a 200 stream, as the status they stand for.
_STATUS_OF_ERROR_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Strings shaped like API keys, including providers' masked echoes ("sk-abc***wxyz").
_KEY_SHAPED = re.compile(r"\b(?:sk|key)-[A-Za-z0-9_\-*.]{4,}")
_REDACTED = "[redacted]"


def error_from_status(
    provider: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Sequence[str] = (),
    now: float | None = None,
) -> MeshError:
    """A non-2xx provider response as a MeshError (code, reason, RetryInfo, metadata)."""
    error_type, provider_message = _parse_error_body(body)
    reason = _reason_for(status)
    metadata = {"provider": provider, "http_status": str(status)}
    if error_type:
        metadata["provider_error_type"] = error_type
    request_id = headers.get("x-request-id") or headers.get("request-id")
    if request_id:
        metadata["provider_request_id"] = request_id
    detail = scrub(provider_message, secrets) if provider_message else ""
    if reason is Reason.UPSTREAM_AUTH:
        # The deployment's key was refused, not the caller's: say so plainly.
        message = f"{provider} rejected the deployment's credentials (HTTP {status})"
    else:
        message = f"{provider}: HTTP {status}"
    if detail:
        message = f"{message}: {detail}"
    return MeshError.of(
        reason,
        truncate_utf8(message),
        retry_after=retry_after_seconds(headers, time.time() if now is None else now),
        metadata=metadata,
    )


def error_from_stream_event(
    provider: str, error_type: str, message: str, *, secrets: Sequence[str] = ()
) -> MeshError:
    """An error event inside a 200 stream (Anthropic `event: error`, OpenAI `{"error":..}`)."""
    reason = _reason_for(_STATUS_OF_ERROR_TYPE.get(error_type, 500))
    return MeshError.of(
        reason,
        truncate_utf8(f"{provider}: {error_type or 'error'} in stream: {scrub(message, secrets)}"),
        metadata={
            "provider": provider,
            "http_status": "200",
            "provider_error_type": error_type,
        },
    )


def interrupted(cause: MeshError, usage: events_pb2.Usage) -> MeshError:
    """The stream failed after output began: never retried, carries the usage known. The
    cause's code, message and metadata are kept; only the reason and usage change."""
    return cause.replace(
        reason=Reason.UPSTREAM_INTERRUPTED,
        message=truncate_utf8(f"{cause.message} (after output began)"),
        metadata={**cause.metadata, "cause": cause.reason.value},
        usage=usage,
    )


def upstream_timeout(provider: str, what: str) -> MeshError:
    return MeshError.of(
        Reason.UPSTREAM_TIMEOUT, f"{provider}: {what}", metadata={"provider": provider}
    )


def upstream_malformed(provider: str) -> MeshError:
    """A 2xx answer whose body is not the provider's documented shape."""
    return MeshError.of(
        Reason.UPSTREAM_MALFORMED,
        f"{provider}: malformed response",
        metadata={"provider": provider},
    )


def upstream_unreachable(provider: str, exc: Exception) -> MeshError:
    # Only the exception's type: httpx messages can carry URLs, never anything we need.
    return MeshError.of(
        Reason.UPSTREAM_UNAVAILABLE,
        f"{provider}: connection failed ({type(exc).__name__})",
        metadata={"provider": provider},
    )


def stream_ended_early(provider: str) -> MeshError:
    return MeshError.of(
        Reason.UPSTREAM_UNAVAILABLE,
        f"{provider}: stream ended before its final event",
        metadata={"provider": provider},
    )


def overloaded(provider: str, waited_s: float, retry_after: float) -> MeshError:
    """Every connection to the provider was busy for the whole pool wait: the mesh's own
    queue is full, which says nothing about the provider's health."""
    return MeshError.of(
        Reason.OVERLOADED,
        f"{provider}: all connections busy for {waited_s:g}s",
        retry_after=retry_after,
        metadata={"provider": provider},
    )


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` without the given secrets or anything shaped like an API key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return _KEY_SHAPED.sub(_REDACTED, text)


def truncate_utf8(text: str, limit: int = MESSAGE_LIMIT_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (marked with "..."), never mid-character."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def retry_after_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait, from retry-after-ms, retry-after, then rate-limit reset headers.

    For the reset headers, the windows that are exhausted (remaining 0) decide; when
    none says so, the longest reset wins. `now` is epoch seconds.
    """
    millis = _float(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    retry_after = headers.get("retry-after")
    if retry_after:
        seconds = _float(retry_after)
        if seconds is not None:
            return seconds
        try:
            when = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - now)
    resets: list[tuple[float | None, float]] = []
    for window in ("requests", "tokens"):
        reset = parse_go_duration(headers.get(f"x-ratelimit-reset-{window}", ""))
        if reset is not None:
            resets.append((_float(headers.get(f"x-ratelimit-remaining-{window}")), reset))
    for window in ("requests", "tokens", "input-tokens", "output-tokens"):
        at = _rfc3339(headers.get(f"anthropic-ratelimit-{window}-reset", ""))
        if at is not None:
            remaining = _float(headers.get(f"anthropic-ratelimit-{window}-remaining"))
            resets.append((remaining, max(0.0, at - now)))
    exhausted = [seconds for remaining, seconds in resets if remaining == 0]
    pool = exhausted or [seconds for _, seconds in resets]
    return max(pool) if pool else None


def parse_go_duration(text: str) -> float | None:
    """Seconds in a Go duration ("1s", "6m0s", "20ms", "1h2m3.5s"); a bare number is seconds."""
    text = text.strip()
    if not text:
        return None
    plain = _float(text)
    if plain is not None:
        return plain
    total, end = 0.0, 0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != end:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        end = match.end()
    return total if end == len(text) and end > 0 else None


def _reason_for(status: int) -> Reason:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return Reason.UPSTREAM_UNAVAILABLE if status >= 500 else Reason.UPSTREAM_BAD_REQUEST


def _parse_error_body(body: bytes) -> tuple[str, str]:
    """(error type, message) from either shape: OpenAI {"error": {...}} or Anthropic
    {"type": "error", "error": {"type", "message"}}; non-JSON bodies (proxy HTML) give none."""
    try:
        parsed = orjson.loads(body[:ERROR_BODY_LIMIT])
    except orjson.JSONDecodeError:
        return "", ""
    if not isinstance(parsed, dict):
        return "", ""
    error = parsed.get("error", parsed)
    if isinstance(error, str):
        return "", error
    if not isinstance(error, dict):
        return "", ""
    message = error.get("message")
    error_type = error.get("type") or error.get("code")
    return (
        error_type if isinstance(error_type, str) else "",
        message if isinstance(message, str) else "",
    )


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    # "inf" and "nan" parse as floats; neither is a time to wait (and inf cannot be a Duration).
    return number if math.isfinite(number) and number >= 0 else None


def _rfc3339(text: str) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None
