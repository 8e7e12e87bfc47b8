"""The one provider-HTTP-status → MeshError mapping, and retry-after parsing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import grpc
import httpx
import pytest

from adapters.http_errors import (
    error_from_status,
    error_from_stream_event,
    interrupted,
    parse_go_duration,
    retry_after_seconds,
    scrub,
    upstream_unreachable,
)
from imesh.errors import Reason
from imesh.v1 import events_pb2

NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC).timestamp()
OPENAI_BODY = json.dumps(
    {
        "error": {
            "message": "bad temperature",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
).encode()
ANTHROPIC_BODY = json.dumps(
    {"type": "error", "error": {"type": "invalid_request_error", "message": "bad temperature"}}
).encode()


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_BAD_REQUEST"),
        (401, grpc.StatusCode.PERMISSION_DENIED, "UPSTREAM_AUTH"),
        (403, grpc.StatusCode.PERMISSION_DENIED, "UPSTREAM_AUTH"),
        (404, grpc.StatusCode.NOT_FOUND, "UPSTREAM_MODEL_NOT_FOUND"),
        (408, grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT"),
        (413, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_BAD_REQUEST"),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
        (500, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (502, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (503, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT"),
        (529, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_OVERLOADED"),
        (599, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (418, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_BAD_REQUEST"),
    ],
)
def test_status_maps_to_code_and_reason(status: int, code: grpc.StatusCode, reason: str) -> None:
    error = error_from_status("p", status, httpx.Headers(), b"", now=NOW)
    assert (error.code, error.reason) == (code, reason)
    assert error.metadata["http_status"] == str(status)
    assert error.metadata["provider"] == "p"


@pytest.mark.parametrize("body", [OPENAI_BODY, ANTHROPIC_BODY])
def test_both_error_body_shapes_give_the_providers_message_and_type(body: bytes) -> None:
    error = error_from_status("p", 400, httpx.Headers({"request-id": "req_1"}), body, now=NOW)
    assert error.message == "p: HTTP 400: bad temperature"
    assert error.metadata["provider_error_type"] == "invalid_request_error"
    assert error.metadata["provider_request_id"] == "req_1"


def test_a_non_json_body_gives_only_the_status() -> None:
    error = error_from_status("p", 502, httpx.Headers(), b"<html>bad gateway</html>", now=NOW)
    assert error.message == "p: HTTP 502"


def test_auth_errors_say_it_is_the_deployments_key_not_the_callers() -> None:
    error = error_from_status("p", 401, httpx.Headers(), OPENAI_BODY, now=NOW)
    assert "deployment's credentials" in error.message


def test_rate_limit_carries_retry_after_and_reads_as_rate_limited() -> None:
    error = error_from_status("p", 429, httpx.Headers({"retry-after": "3"}), b"", now=NOW)
    assert error.rate_limited
    assert error.retry_after == 3.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "9"}, 9.0),
        ({"retry-after": "Mon, 23 Nov 2026 10:00:12 GMT"}, 12.0),
        # OpenAI: the exhausted window decides, whatever the other says.
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "20ms",
                "x-ratelimit-remaining-tokens": "100",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            0.02,
        ),
        # None exhausted (or unknown): the longest reset.
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "1m30s"}, 90.0),
        # Anthropic: RFC 3339 instants, relative to now.
        (
            {
                "anthropic-ratelimit-requests-remaining": "3",
                "anthropic-ratelimit-requests-reset": "2026-11-23T10:00:40Z",
                "anthropic-ratelimit-output-tokens-remaining": "0",
                "anthropic-ratelimit-output-tokens-reset": "2026-11-23T10:00:05Z",
            },
            5.0,
        ),
        ({"anthropic-ratelimit-tokens-reset": "2026-11-23T09:59:00Z"}, 0.0),
        ({}, None),
        ({"retry-after": "soon"}, None),
    ],
)
def test_retry_after_sources_in_order_of_precedence(
    headers: dict[str, str], expected: float | None
) -> None:
    result = retry_after_seconds(httpx.Headers(headers), NOW)
    assert result == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),
        ("", None),
        ("6 minutes", None),
        ("1s2x", None),
    ],
)
def test_go_durations_parse_to_seconds(text: str, seconds: float | None) -> None:
    assert parse_go_duration(text) == (None if seconds is None else pytest.approx(seconds))


def test_scrub_removes_the_secret_and_key_shaped_echoes() -> None:
    text = "key sk-live-ABCDEFGH1234 and masked sk-proj-***wxyz and raw S3CR3T-VALUE-99"
    cleaned = scrub(text, ["S3CR3T-VALUE-99"])
    assert "S3CR3T" not in cleaned
    assert "ABCDEFGH" not in cleaned
    assert "wxyz" not in cleaned


@pytest.mark.parametrize(
    ("error_type", "code", "reason"),
    [
        ("overloaded_error", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_OVERLOADED"),
        ("api_error", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        ("rate_limit_error", grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
        ("invalid_request_error", grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_BAD_REQUEST"),
        ("server_error", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        ("something_new", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
    ],
)
def test_in_stream_error_types_map_like_their_status(
    error_type: str, code: grpc.StatusCode, reason: str
) -> None:
    error = error_from_stream_event("p", error_type, "Overloaded")
    assert (error.code, error.reason) == (code, reason)
    assert error.metadata["provider_error_type"] == error_type


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "inf"},
        {"retry-after": "Infinity"},
        {"retry-after-ms": "1e400"},
        {"x-ratelimit-reset-requests": "inf"},
    ],
)
def test_a_non_finite_retry_after_is_ignored_and_the_error_still_becomes_a_status(
    headers: dict[str, str],
) -> None:
    assert retry_after_seconds(httpx.Headers(headers), NOW) is None
    error = error_from_status("p", 429, httpx.Headers(headers), b"", now=NOW)
    assert error.retry_after is None
    assert error.to_status().code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_long_provider_message_is_cut_so_the_status_fits_grpc_trailers() -> None:
    # gRPC drops trailers over 8 KiB (soft) / 16 KiB (hard) and the code's details with them.
    detail = "é" * 5_000  # 10 KB of UTF-8
    body = json.dumps({"error": {"message": detail, "type": "invalid_request_error"}}).encode()
    for error in (
        error_from_status("p", 400, httpx.Headers(), body, now=NOW),
        error_from_stream_event("p", "invalid_request_error", detail),
    ):
        assert error.message.startswith("p:")
        assert "é" in error.message
        assert len(error.message.encode()) <= 1024
        metadata = error.to_status().trailing_metadata
        assert sum(len(k) + len(v) for k, v in metadata) < 4096


def test_an_interrupted_stream_keeps_its_cause_and_never_repeats_the_message() -> None:
    cause = upstream_unreachable("openai_compatible", httpx.ReadError("boom"))
    usage = events_pb2.Usage(prompt_tokens=3, completion_tokens=2, estimated=True)
    err = interrupted(cause, usage)
    assert err.reason is Reason.UPSTREAM_INTERRUPTED
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert not err.retryable
    assert err.usage == usage
    assert err.metadata["cause"] == "UPSTREAM_UNAVAILABLE"
    assert err.message == "openai_compatible: connection failed (ReadError) (after output began)"
    assert err.message.count("openai_compatible") == 1
    assert cause.usage is None  # the cause itself is untouched (MeshError is immutable)
