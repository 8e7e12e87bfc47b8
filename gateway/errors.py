"""The edge's one mapping from a mesh failure (MeshError / gRPC status) to HTTP + OpenAI body.

Every error the edge returns, whether raised by the router, by the typed client, or by the
edge's own validation, goes through `http_error`; nothing else picks an HTTP status.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass

import grpc

from imesh.errors import MeshError

logger = logging.getLogger("imesh.gateway")

# Reasons that turn RESOURCE_EXHAUSTED into 413 instead of 429: the request itself is too big,
# waiting will not help.
TOO_LARGE_REASONS = frozenset(
    {"REQUEST_TOO_LARGE", "BODY_TOO_LARGE", "PAYLOAD_TOO_LARGE", "MESSAGE_TOO_LARGE"}
)
# A bug in the edge itself: the one case that is an honest 500 (never with a trace).
EDGE_INTERNAL = "EDGE_INTERNAL"
# HTTP 499 ("client closed request", nginx): the caller went away before the answer.
CLIENT_CLOSED = 499

_S = grpc.StatusCode
ALL_ATTEMPTS_FAILED = "ALL_ATTEMPTS_FAILED"
# With ALL_ATTEMPTS_FAILED, the last attempt's code decides; these become 502 (rate limits
# stay 429 with Retry-After, deadlines stay 504).
_UPSTREAM_FAILED_AS_502 = frozenset({_S.UNAVAILABLE, _S.INTERNAL, _S.UNKNOWN, _S.ABORTED})
# gRPC code -> (HTTP status, OpenAI error type).
_BY_CODE: dict[grpc.StatusCode, tuple[int, str]] = {
    _S.INVALID_ARGUMENT: (400, "invalid_request_error"),
    _S.FAILED_PRECONDITION: (400, "invalid_request_error"),
    _S.OUT_OF_RANGE: (400, "invalid_request_error"),
    _S.UNAUTHENTICATED: (401, "authentication_error"),
    _S.PERMISSION_DENIED: (403, "permission_error"),
    _S.NOT_FOUND: (404, "invalid_request_error"),
    _S.ALREADY_EXISTS: (409, "invalid_request_error"),
    _S.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    _S.CANCELLED: (CLIENT_CLOSED, "api_error"),
    _S.UNIMPLEMENTED: (501, "api_error"),
    _S.UNAVAILABLE: (503, "api_error"),
    _S.DEADLINE_EXCEEDED: (504, "api_error"),
    # Upstream failures: the edge is a gateway, the fault is behind it.
    _S.ABORTED: (502, "api_error"),
    _S.INTERNAL: (502, "api_error"),
    _S.UNKNOWN: (502, "api_error"),
    _S.DATA_LOSS: (502, "api_error"),
    _S.OK: (502, "api_error"),
}

# Proto field paths -> the OpenAI request's names, applied in order to a violation's field.
_PARAM_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), repl)
    for pattern, repl in (
        (r"^(?:input|request)\.", ""),
        (r"^tools\[(\d+)\]\.parameters_json", r"tools[\1].function.parameters"),
        (r"^tools\[(\d+)\]\.(name|description|strict)", r"tools[\1].function.\2"),
        (r"^tool_choice\.function_name", "tool_choice.function.name"),
        (r"^tool_choice\.mode$", "tool_choice"),
        (r"^response_format\.json_schema$", "response_format.json_schema.schema"),
        (r"^response_format\.schema_name", "response_format.json_schema.name"),
        (r"^response_format\.strict", "response_format.json_schema.strict"),
        (r"\.tool_calls\[(\d+)\]\.arguments_json", r".tool_calls[\1].function.arguments"),
        (r"\.tool_calls\[(\d+)\]\.name", r".tool_calls[\1].function.name"),
        (r"\.content\[(\d+)\]\.image(\.|$)", r".content[\1].image_url\2"),
    )
)


@dataclass(frozen=True, slots=True)
class HttpError:
    """A ready-to-send error: status, encoded OpenAI error body, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


def openai_param(field_path: str) -> str:
    """A violation's field path in the OpenAI request's terms ("input.temperature" -> ...)."""
    for pattern, repl in _PARAM_REWRITES:
        field_path = pattern.sub(repl, field_path)
    return field_path


def error_object(err: MeshError) -> dict[str, object]:
    """The inner OpenAI error object {message, type, param, code} for a MeshError."""
    _, err_type = _status_and_type(err)
    param = openai_param(err.field_violations[0].field) if err.field_violations else None
    return {
        "message": err.message or err.reason,
        "type": err_type,
        "param": param,
        "code": err.reason.lower() if err.reason else None,
    }


def http_error(exc: BaseException) -> HttpError:
    """The HTTP status, OpenAI error body and headers for any failure of a call."""
    err = as_mesh_error(exc)
    status, _ = _status_and_type(err)
    body = json.dumps({"error": error_object(err)}, separators=(",", ":")).encode()
    headers: tuple[tuple[bytes, bytes], ...] = ()
    # 429 always says when to come back; 503 (breakers open, draining) when it knows.
    delay = err.retry_after if err.retry_after is not None else (1.0 if status == 429 else None)
    if delay is not None and status in (429, 503):
        # The SDK honours retry-after-ms first (sub-second precision), then Retry-After.
        headers = (
            (b"retry-after", str(max(0, math.ceil(delay))).encode()),
            (b"retry-after-ms", str(max(0, round(delay * 1000))).encode()),
        )
    return HttpError(status, body, headers)


def as_mesh_error(exc: BaseException) -> MeshError:
    """Any failure as a MeshError; unexpected exceptions become an opaque INTERNAL error
    (their text may hold internals, so it is never shown to the caller)."""
    if isinstance(exc, MeshError):
        return exc
    if isinstance(exc, grpc.RpcError):
        return MeshError.from_rpc_error(exc)
    return MeshError(grpc.StatusCode.INTERNAL, EDGE_INTERNAL, "internal error in the edge")


def _status_and_type(err: MeshError) -> tuple[int, str]:
    if err.reason == EDGE_INTERNAL:
        return 500, "api_error"
    if err.code is grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason in TOO_LARGE_REASONS:
        return 413, "invalid_request_error"
    if err.reason == ALL_ATTEMPTS_FAILED and err.code in _UPSTREAM_FAILED_AS_502:
        # Every upstream attempt failed: a bad gateway, not the mesh being unavailable
        # (503 stays for "the mesh refuses now": breakers open, draining).
        return 502, "api_error"
    return _BY_CODE.get(err.code, (502, "api_error"))


def log_unexpected(exc: BaseException) -> None:
    """Log a failure that is neither a MeshError nor a gRPC status: a bug, worth a trace
    in the log (never in the response)."""
    if not isinstance(exc, MeshError | grpc.RpcError):
        logger.error("unexpected failure in the edge", exc_info=exc)
