"""The one MeshError -> HTTP status + OpenAI error body mapping."""

from __future__ import annotations

import json

import grpc
import pytest

from gateway.errors import http_error, openai_param
from imesh.errors import FieldViolation, MeshError, Reason, invalid_argument

S = grpc.StatusCode
R = Reason


@pytest.mark.parametrize(
    ("code", "reason", "status", "err_type"),
    [
        (S.INVALID_ARGUMENT, R.INVALID_REQUEST, 400, "invalid_request_error"),
        (S.FAILED_PRECONDITION, R.NO_CAPABLE_DEPLOYMENT, 400, "invalid_request_error"),
        (S.UNAUTHENTICATED, R.INVALID_API_KEY, 401, "authentication_error"),
        (S.PERMISSION_DENIED, R.PERMISSION_DENIED, 403, "permission_error"),
        (S.NOT_FOUND, R.MODEL_NOT_FOUND, 404, "invalid_request_error"),
        (S.RESOURCE_EXHAUSTED, R.RATE_LIMITED, 429, "rate_limit_error"),
        (S.RESOURCE_EXHAUSTED, R.QUOTA_EXCEEDED, 429, "rate_limit_error"),
        (S.RESOURCE_EXHAUSTED, R.REQUEST_TOO_LARGE, 413, "invalid_request_error"),
        (S.RESOURCE_EXHAUSTED, R.OVERLOADED, 503, "api_error"),
        (S.RESOURCE_EXHAUSTED, R.ALL_COOLING_DOWN, 429, "rate_limit_error"),
        (S.CANCELLED, R.CLIENT_CLOSED, 499, "api_error"),
        (S.UNAVAILABLE, R.ALL_BREAKERS_OPEN, 503, "api_error"),
        (S.UNAVAILABLE, R.ALL_ATTEMPTS_FAILED, 502, "api_error"),
        (S.RESOURCE_EXHAUSTED, R.ALL_ATTEMPTS_FAILED, 429, "rate_limit_error"),
        (S.UNAVAILABLE, R.UPSTREAM_INTERRUPTED, 502, "api_error"),
        (S.DEADLINE_EXCEEDED, R.CALLER_DEADLINE, 504, "api_error"),
        (S.INTERNAL, R.BACKEND_CRASHED, 502, "api_error"),
        (S.UNKNOWN, R.UNSPECIFIED, 502, "api_error"),
        (S.UNIMPLEMENTED, R.UNSPECIFIED, 501, "api_error"),
    ],
)
def test_grpc_code_maps_to_http_status_and_openai_type(
    code: grpc.StatusCode, reason: Reason, status: int, err_type: str
) -> None:
    err = http_error(MeshError(code, reason, "what happened"))
    assert err.status == status
    body = json.loads(err.body)["error"]
    assert body == {
        "message": "what happened",
        "type": err_type,
        "param": None,
        "code": reason.value.lower(),
    }


def test_rate_limit_sends_retry_after_rounded_up_in_seconds_and_ms() -> None:
    err = http_error(MeshError.of(R.RATE_LIMITED, "slow down", retry_after=2.2))
    assert dict(err.headers) == {b"retry-after": b"3", b"retry-after-ms": b"2200"}


def test_rate_limit_without_a_known_delay_still_says_retry_after() -> None:
    err = http_error(MeshError.of(R.QUOTA_EXCEEDED, "over quota"))
    assert dict(err.headers)[b"retry-after"] == b"1"


def test_unavailable_carries_retry_after_only_when_known() -> None:
    assert http_error(MeshError.of(R.DRAINING, "x")).headers == ()
    known = http_error(MeshError.of(R.ALL_BREAKERS_OPEN, "x", retry_after=9.5))
    assert dict(known.headers)[b"retry-after"] == b"10"


def test_param_is_the_first_violation_in_openai_names() -> None:
    err = MeshError.of(
        R.INVALID_REQUEST,
        "bad",
        field_violations=(
            FieldViolation("input.tools[0].parameters_json", "not an object"),
            FieldViolation("input.temperature", "too hot"),
        ),
    )
    assert json.loads(http_error(err).body)["error"]["param"] == "tools[0].function.parameters"


@pytest.mark.parametrize(
    ("proto_path", "param"),
    [
        ("input.temperature", "temperature"),
        ("input.messages[1].content", "messages[1].content"),
        ("input.messages[0].content[2].image.url", "messages[0].content[2].image_url.url"),
        (
            "input.messages[0].tool_calls[1].arguments_json",
            "messages[0].tool_calls[1].function.arguments",
        ),
        ("input.tool_choice.function_name", "tool_choice.function.name"),
        ("input.tool_choice.mode", "tool_choice"),
        ("input.response_format.json_schema", "response_format.json_schema.schema"),
        ("max_tokens", "max_tokens"),
    ],
)
def test_proto_field_paths_become_openai_param_names(proto_path: str, param: str) -> None:
    assert openai_param(proto_path) == param


def test_unexpected_exception_is_an_opaque_500_without_its_text() -> None:
    err = http_error(RuntimeError("secret internals at 0xdeadbeef"))
    assert err.status == 500
    assert b"deadbeef" not in err.body
    assert b"Traceback" not in err.body


def test_edge_validation_error_is_400_naming_the_field() -> None:
    err = http_error(invalid_argument("messages[1].content", "must be a string"))
    assert err.status == 400
    assert json.loads(err.body)["error"]["param"] == "messages[1].content"
