"""The edge's one mapping from a mesh failure (MeshError / gRPC status) to HTTP + OpenAI body
(the status itself comes from `imesh.errors.classify`, the one table).

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

from gateway.openai_usage import usage_object
from imesh.errors import MeshError, Reason, classify

logger = logging.getLogger("imesh.gateway")

# HTTP 499 ("client closed request", nginx): the caller went away before the answer.
CLIENT_CLOSED = 499

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
    err_type = classify(err).http_type
    param = openai_param(err.field_violations[0].field) if err.field_violations else None
    return {
        "message": err.message or err.reason.value,
        "type": err_type,
        "param": param,
        "code": err.reason.value.lower(),
    }


def http_error(exc: BaseException) -> HttpError:
    """The HTTP status, OpenAI error body and headers for any failure of a call."""
    err = as_mesh_error(exc)
    status = classify(err).http_status
    payload: dict[str, object] = {"error": error_object(err)}
    if err.usage is not None:
        # A call cut after output began was still billed: say what it spent.
        payload["usage"] = usage_object(err.usage)
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers: tuple[tuple[bytes, bytes], ...] = ()
    # 429 always says when to come back; 503 (breakers open, draining) when it knows.
    delay = err.retry_after if err.retry_after is not None else (1.0 if status == 429 else None)
    if delay is not None and status in (429, 503):
        # The SDK honours retry-after-ms first (sub-second precision), then Retry-After.
        headers = (
            (b"retry-after", str(max(0, math.ceil(delay))).encode()),
            (b"retry-after-ms", str(max(0, round(delay * 1000))).encode()),
        )
    # A tenant's limit refusal carries OpenAI's x-ratelimit-* figures in its metadata.
    headers += tuple(
        (k.encode(), v.encode()) for k, v in err.metadata.items() if k.startswith("x-ratelimit-")
    )
    return HttpError(status, body, headers)


def as_mesh_error(exc: BaseException) -> MeshError:
    """Any failure as a MeshError; unexpected exceptions become an opaque INTERNAL error
    (their text may hold internals, so it is never shown to the caller)."""
    if isinstance(exc, MeshError):
        return exc
    if isinstance(exc, grpc.RpcError):
        return MeshError.from_rpc_error(exc)
    return MeshError.of(Reason.EDGE_INTERNAL, "internal error in the edge")


def log_unexpected(exc: BaseException) -> None:
    """Log a failure that is neither a MeshError nor a gRPC status: a bug, worth a trace
    in the log (never in the response)."""
    if not isinstance(exc, MeshError | grpc.RpcError):
        logger.error("unexpected failure in the edge", exc_info=exc)
