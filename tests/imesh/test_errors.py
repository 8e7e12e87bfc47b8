"""The error model: one Reason enum, one classify() table, an immutable MeshError that
survives a gRPC status round trip."""

from __future__ import annotations

import dataclasses
import pickle

import grpc
import pytest
from google.rpc import status_pb2

from imesh.errors import (
    Fault,
    FieldViolation,
    MeshError,
    Reason,
    Verdict,
    classify,
    reason_from_wire,
)
from imesh.v1 import events_pb2

S = grpc.StatusCode


def _round_trip(err: MeshError) -> MeshError:
    """What a server sends (`to_status`) read back as a client reads it."""
    status = err.to_status()
    (_, details), *_ = status.trailing_metadata
    return MeshError.from_status(status.code, status.details, status_pb2.Status.FromString(details))


def test_every_reason_has_a_row_and_a_default_code() -> None:
    for reason in Reason:
        err = MeshError.of(reason, "x")
        assert isinstance(err.code, grpc.StatusCode)
        assert classify(err).http_status >= 400


def test_caller_deadline_is_no_verdict_but_a_bare_remote_deadline_is() -> None:
    own = classify(MeshError.of(Reason.CALLER_DEADLINE, "late"))
    assert (own.fault, own.verdict, own.retryable) == (Fault.CALLER, Verdict.NONE, False)
    bare = classify(MeshError(S.DEADLINE_EXCEEDED, Reason.UNSPECIFIED, "remote timeout"))
    assert (bare.fault, bare.verdict, bare.retryable) == (Fault.UPSTREAM, Verdict.FAILURE, True)


def test_a_status_without_error_info_is_unspecified_not_the_callers_deadline() -> None:
    err = MeshError.from_status(S.DEADLINE_EXCEEDED, "Deadline Exceeded", None)
    assert err.reason is Reason.UNSPECIFIED
    assert classify(err).verdict is Verdict.FAILURE


def test_upstream_rate_limit_cools_down_without_a_failure() -> None:
    c = classify(MeshError.of(Reason.UPSTREAM_RATE_LIMITED, "429", retry_after=2.0))
    assert (c.verdict, c.retryable, c.http_status) == (Verdict.COOL_DOWN, True, 429)


def test_overload_is_the_meshs_own_fault_and_never_a_breaker_verdict() -> None:
    c = classify(MeshError.of(Reason.OVERLOADED, "busy", retry_after=1.0))
    assert (c.fault, c.verdict, c.http_status) == (Fault.MESH, Verdict.NONE, 503)


def test_interrupted_stream_is_never_retried_and_is_a_bad_gateway() -> None:
    c = classify(MeshError.of(Reason.UPSTREAM_INTERRUPTED, "cut"))
    assert (c.retryable, c.http_status) == (False, 502)


def test_deployment_credentials_refused_exclude_that_deployment_only() -> None:
    c = classify(MeshError.of(Reason.UPSTREAM_AUTH, "401"))
    assert (c.retryable, c.exclude, c.verdict) == (True, True, Verdict.FAILURE)


@pytest.mark.parametrize(
    ("code", "http"),
    [
        (S.UNAVAILABLE, 502),
        (S.RESOURCE_EXHAUSTED, 429),
        (S.DEADLINE_EXCEEDED, 504),
        # a deployment's credentials or model refused behind the router: never the caller's
        (S.UNAUTHENTICATED, 502),
        (S.PERMISSION_DENIED, 502),
        (S.NOT_FOUND, 502),
    ],
)
def test_all_attempts_failed_takes_its_status_from_the_last_code(
    code: grpc.StatusCode, http: int
) -> None:
    assert classify(MeshError(code, Reason.ALL_ATTEMPTS_FAILED, "x")).http_status == http


def test_mesh_error_is_immutable() -> None:
    err = MeshError.of(Reason.UPSTREAM_UNAVAILABLE, "down", metadata={"a": "1"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        err.message = "changed"
    with pytest.raises(TypeError):
        err.metadata["a"] = "2"  # type: ignore[index]
    changed = err.with_metadata(b="2")
    assert dict(changed.metadata) == {"a": "1", "b": "2"}
    assert dict(err.metadata) == {"a": "1"}


def test_exception_machinery_may_still_annotate_it() -> None:
    err = MeshError.of(Reason.INTERNAL, "x")
    err.add_note("context for a failing test")
    with pytest.raises(MeshError) as caught:
        raise err from ValueError("cause")
    assert isinstance(caught.value.__cause__, ValueError)
    assert caught.value.__notes__ == ["context for a failing test"]


def test_plain_string_reasons_become_members_and_unknown_ones_are_refused() -> None:
    assert MeshError(S.NOT_FOUND, "MODEL_NOT_FOUND", "x").reason is Reason.MODEL_NOT_FOUND  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NOT_A_REASON"):
        MeshError(S.NOT_FOUND, "NOT_A_REASON", "x")  # type: ignore[arg-type]


def test_an_unknown_wire_reason_is_judged_by_its_code() -> None:
    assert reason_from_wire("FROM_A_NEWER_PEER") is Reason.UNSPECIFIED


def test_status_round_trip_keeps_reason_retry_violations_metadata_and_partial_usage() -> None:
    usage = events_pb2.Usage(prompt_tokens=7, completion_tokens=3, cost_micros=42, estimated=True)
    err = MeshError.of(
        Reason.UPSTREAM_INTERRUPTED,
        "cut after output",
        retry_after=1.5,
        field_violations=(FieldViolation("input.x", "bad"),),
        metadata={"deployment": "d1"},
        usage=usage,
    )
    back = _round_trip(err)
    assert (back.code, back.reason, back.message) == (err.code, err.reason, err.message)
    assert back.retry_after == pytest.approx(1.5)
    assert back.field_violations == (FieldViolation("input.x", "bad"),)
    assert dict(back.metadata) == {"deployment": "d1"}
    assert back.usage == usage


def test_it_pickles_for_process_pools() -> None:
    err = MeshError.of(Reason.OVERLOADED, "busy", metadata={"k": "v"})
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.message, dict(back.metadata)) == (err.reason, "busy", {"k": "v"})
