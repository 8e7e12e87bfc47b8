"""MeshError and Reason: the mesh's one error type, its one classification, and its round
trip through a gRPC status.

Every failure carries a `Reason` (a machine code that crosses process boundaries as the
google.rpc ErrorInfo reason) and a gRPC code. `classify()` answers every question asked of
an error (retry it? whose fault? what does it say about the deployment? which HTTP status?)
from one table, so no other module keeps its own set of codes.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from imesh.v1 import events_pb2

DOMAIN = "imesh.dev"

_S = grpc.StatusCode


class Reason(enum.StrEnum):
    """Why a call failed. The value is the wire form (ErrorInfo.reason); the HTTP edge
    sends it lower-cased as the OpenAI error `code`."""

    # The caller or its request: the same request fails the same way everywhere.
    INVALID_REQUEST = "INVALID_REQUEST"
    INVALID_JSON = "INVALID_JSON"
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
    UNKNOWN_URL = "UNKNOWN_URL"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    NO_CAPABLE_DEPLOYMENT = "NO_CAPABLE_DEPLOYMENT"
    MISSING_API_KEY = "MISSING_API_KEY"
    INVALID_API_KEY = "INVALID_API_KEY"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    CALLER_DEADLINE = "CALLER_DEADLINE"
    CLIENT_CLOSED = "CLIENT_CLOSED"
    # The mesh's own state: no verdict on any deployment.
    OVERLOADED = "OVERLOADED"
    TENANCY_UNAVAILABLE = "TENANCY_UNAVAILABLE"
    ALL_BREAKERS_OPEN = "ALL_BREAKERS_OPEN"
    ALL_COOLING_DOWN = "ALL_COOLING_DOWN"
    DRAINING = "DRAINING"
    INTERNAL = "INTERNAL"
    EDGE_INTERNAL = "EDGE_INTERNAL"
    # The router's own limits on a deployment.
    FIRST_TOKEN_TIMEOUT = "FIRST_TOKEN_TIMEOUT"
    ATTEMPT_TIMEOUT = "ATTEMPT_TIMEOUT"
    # The deployment, the adapter service or the provider behind them.
    UPSTREAM_BAD_REQUEST = "UPSTREAM_BAD_REQUEST"
    UPSTREAM_AUTH = "UPSTREAM_AUTH"
    UPSTREAM_MODEL_NOT_FOUND = "UPSTREAM_MODEL_NOT_FOUND"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    UPSTREAM_RATE_LIMITED = "UPSTREAM_RATE_LIMITED"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_OVERLOADED = "UPSTREAM_OVERLOADED"
    UPSTREAM_MALFORMED = "UPSTREAM_MALFORMED"
    UPSTREAM_INTERRUPTED = "UPSTREAM_INTERRUPTED"
    ADAPTER_UNAVAILABLE = "ADAPTER_UNAVAILABLE"
    ADAPTER_UNAUTHENTICATED = "ADAPTER_UNAUTHENTICATED"
    BACKEND_CRASHED = "BACKEND_CRASHED"
    # Every attempt failed: the last attempt's code decides.
    ALL_ATTEMPTS_FAILED = "ALL_ATTEMPTS_FAILED"
    # A status that came without ErrorInfo (a bare remote status): judged by its code.
    UNSPECIFIED = "UNSPECIFIED"


class Fault(enum.Enum):
    """Whose failure it is."""

    CALLER = "caller"  # the request or the caller's own limits
    MESH = "mesh"  # the mesh's own state: overload, breakers open, draining
    UPSTREAM = "upstream"  # the deployment or what is behind it


class Verdict(enum.Enum):
    """What a failed attempt says about its deployment's breaker."""

    FAILURE = "failure"  # counts against it
    COOL_DOWN = "cool_down"  # rate limited: rest for `retry_after`, not a failure
    NONE = "none"  # says nothing about it: release the slot


@dataclass(frozen=True, slots=True)
class Classification:
    """The answers `classify()` gives."""

    fault: Fault
    verdict: Verdict
    retryable: bool  # another attempt (before the first token) may succeed
    exclude: bool  # retry elsewhere, never on this deployment again
    http_status: int
    http_type: str  # OpenAI error `type`


@dataclass(frozen=True, slots=True)
class _Row:
    code: grpc.StatusCode
    fault: Fault
    verdict: Verdict
    retryable: bool | None = None  # None: by code
    exclude: bool = False
    http: int | None = None  # None: by code


_C, _M, _U = Fault.CALLER, Fault.MESH, Fault.UPSTREAM
_F, _CD, _N = Verdict.FAILURE, Verdict.COOL_DOWN, Verdict.NONE

# The one table. Codes are each reason's default; an error may carry another code (an
# interrupted stream keeps its cause's), and then the code's answers apply where the row
# leaves them open.
_ROWS: dict[Reason, _Row] = {
    Reason.INVALID_REQUEST: _Row(_S.INVALID_ARGUMENT, _C, _N, False),
    Reason.INVALID_JSON: _Row(_S.INVALID_ARGUMENT, _C, _N, False),
    Reason.REQUEST_TOO_LARGE: _Row(_S.RESOURCE_EXHAUSTED, _C, _N, False, http=413),
    Reason.HEADERS_TOO_LARGE: _Row(_S.INVALID_ARGUMENT, _C, _N, False, http=431),
    Reason.UNKNOWN_URL: _Row(_S.NOT_FOUND, _C, _N, False, http=404),
    Reason.MODEL_NOT_FOUND: _Row(_S.NOT_FOUND, _C, _N, False, http=404),
    Reason.NO_CAPABLE_DEPLOYMENT: _Row(_S.FAILED_PRECONDITION, _C, _N, False, http=400),
    Reason.MISSING_API_KEY: _Row(_S.UNAUTHENTICATED, _C, _N, False, http=401),
    Reason.INVALID_API_KEY: _Row(_S.UNAUTHENTICATED, _C, _N, False, http=401),
    Reason.PERMISSION_DENIED: _Row(_S.PERMISSION_DENIED, _C, _N, False, http=403),
    Reason.RATE_LIMITED: _Row(_S.RESOURCE_EXHAUSTED, _C, _N, False, http=429),
    Reason.QUOTA_EXCEEDED: _Row(_S.RESOURCE_EXHAUSTED, _C, _N, False, http=429),
    Reason.BUDGET_EXCEEDED: _Row(_S.RESOURCE_EXHAUSTED, _C, _N, False, http=429),
    Reason.CALLER_DEADLINE: _Row(_S.DEADLINE_EXCEEDED, _C, _N, False, http=504),
    Reason.CLIENT_CLOSED: _Row(_S.CANCELLED, _C, _N, False, http=499),
    Reason.OVERLOADED: _Row(_S.RESOURCE_EXHAUSTED, _M, _N, True, http=503),
    # Keys cannot be checked (Redis down, the key never seen here): refused, not shed.
    Reason.TENANCY_UNAVAILABLE: _Row(_S.UNAVAILABLE, _M, _N, True, http=503),
    Reason.ALL_BREAKERS_OPEN: _Row(_S.UNAVAILABLE, _M, _N, False, http=503),
    Reason.ALL_COOLING_DOWN: _Row(_S.RESOURCE_EXHAUSTED, _M, _N, False, http=429),
    Reason.DRAINING: _Row(_S.UNAVAILABLE, _M, _N, True, http=503),
    Reason.INTERNAL: _Row(_S.INTERNAL, _M, _N, False, http=500),
    Reason.EDGE_INTERNAL: _Row(_S.INTERNAL, _M, _N, False, http=500),
    Reason.FIRST_TOKEN_TIMEOUT: _Row(_S.DEADLINE_EXCEEDED, _U, _F, True, http=504),
    Reason.ATTEMPT_TIMEOUT: _Row(_S.DEADLINE_EXCEEDED, _U, _F, True, http=504),
    # The provider refused the request itself: another deployment would refuse it too.
    Reason.UPSTREAM_BAD_REQUEST: _Row(_S.INVALID_ARGUMENT, _C, _N, False, http=400),
    # The deployment's own credentials or model are wrong: try the others, never this again.
    Reason.UPSTREAM_AUTH: _Row(_S.PERMISSION_DENIED, _U, _F, True, exclude=True, http=502),
    Reason.UPSTREAM_MODEL_NOT_FOUND: _Row(_S.NOT_FOUND, _U, _F, True, exclude=True, http=502),
    Reason.UPSTREAM_TIMEOUT: _Row(_S.DEADLINE_EXCEEDED, _U, _F, True, http=504),
    Reason.UPSTREAM_RATE_LIMITED: _Row(_S.RESOURCE_EXHAUSTED, _U, _CD, True, http=429),
    Reason.UPSTREAM_UNAVAILABLE: _Row(_S.UNAVAILABLE, _U, _F, True, http=502),
    Reason.UPSTREAM_OVERLOADED: _Row(_S.UNAVAILABLE, _U, _F, True, http=502),
    Reason.UPSTREAM_MALFORMED: _Row(_S.UNAVAILABLE, _U, _F, True, http=502),
    # Output had reached the caller: never retried (the text cannot be taken back).
    Reason.UPSTREAM_INTERRUPTED: _Row(_S.UNAVAILABLE, _U, _F, False, http=502),
    Reason.ADAPTER_UNAVAILABLE: _Row(_S.UNAVAILABLE, _U, _F, True, http=502),
    # The router's service token was refused: a misconfigured hop, not a provider fault.
    Reason.ADAPTER_UNAUTHENTICATED: _Row(_S.UNAUTHENTICATED, _U, _F, True, exclude=True, http=502),
    Reason.BACKEND_CRASHED: _Row(_S.INTERNAL, _U, _F, True, http=502),
    Reason.ALL_ATTEMPTS_FAILED: _Row(_S.UNAVAILABLE, _U, _N, False),
    Reason.UNSPECIFIED: _Row(_S.UNKNOWN, _U, _F),
}

# What a code means when the reason leaves it open (UNSPECIFIED, ALL_ATTEMPTS_FAILED).
_RETRYABLE_CODES = frozenset(
    {
        _S.UNAVAILABLE,
        _S.RESOURCE_EXHAUSTED,
        _S.DEADLINE_EXCEEDED,
        _S.INTERNAL,
        _S.UNKNOWN,
        _S.ABORTED,
    }
)
_CALLER_CODES = frozenset(
    {_S.INVALID_ARGUMENT, _S.OUT_OF_RANGE, _S.FAILED_PRECONDITION, _S.CANCELLED, _S.UNAUTHENTICATED}
)
_HTTP_BY_CODE: dict[grpc.StatusCode, int] = {
    _S.INVALID_ARGUMENT: 400,
    _S.FAILED_PRECONDITION: 400,
    _S.OUT_OF_RANGE: 400,
    _S.UNAUTHENTICATED: 401,
    _S.PERMISSION_DENIED: 403,
    _S.NOT_FOUND: 404,
    _S.ALREADY_EXISTS: 409,
    _S.RESOURCE_EXHAUSTED: 429,
    _S.CANCELLED: 499,  # nginx's "client closed request"
    _S.UNIMPLEMENTED: 501,
    _S.UNAVAILABLE: 503,
    _S.DEADLINE_EXCEEDED: 504,
}
# After every attempt failed, an upstream failure is a bad gateway (502), not the mesh
# refusing (503); rate limits stay 429 and deadlines 504. A deployment's refused credentials
# or missing model (UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND from behind the router)
# are never the caller's 401/403/404.
_UPSTREAM_FAILED_AS_502 = frozenset(
    {
        _S.UNAVAILABLE,
        _S.INTERNAL,
        _S.UNKNOWN,
        _S.ABORTED,
        _S.UNAUTHENTICATED,
        _S.PERMISSION_DENIED,
        _S.NOT_FOUND,
    }
)
_HTTP_TYPE: dict[int, str] = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    431: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def classify(error: MeshError) -> Classification:
    """Every question about an error, answered from the one table."""
    row = _ROWS[error.reason]
    code = error.code
    if error.reason is Reason.UNSPECIFIED:
        # A bare status from another process: the code is all there is. A bare
        # DEADLINE_EXCEEDED is the remote side's timeout, never the caller's own deadline.
        fault = _C if code in _CALLER_CODES else _U
        verdict = _N if fault is _C else (_CD if error.rate_limited else _F)
        http = _HTTP_BY_CODE.get(code, 502)
        return Classification(
            fault, verdict, code in _RETRYABLE_CODES, False, http, _HTTP_TYPE.get(http, "api_error")
        )
    retryable = code in _RETRYABLE_CODES if row.retryable is None else row.retryable
    if row.http is not None:
        http = row.http
    elif error.reason is Reason.ALL_ATTEMPTS_FAILED and code in _UPSTREAM_FAILED_AS_502:
        http = 502
    else:
        http = _HTTP_BY_CODE.get(code, 502)
    return Classification(
        row.fault, row.verdict, retryable, row.exclude, http, _HTTP_TYPE.get(http, "api_error")
    )


_BY_VALUE: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def code_from_int(value: int) -> grpc.StatusCode:
    return _BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


def reason_from_wire(value: str) -> Reason:
    """A reason read off the wire; one this version does not know is UNSPECIFIED (judged
    by its code)."""
    try:
        return Reason(value)
    except ValueError:
        return Reason.UNSPECIFIED


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


_FIELDS = frozenset(
    {"code", "reason", "message", "retry_after", "field_violations", "metadata", "usage"}
)


@dataclass(eq=False)
class MeshError(Exception):
    """A failure with a gRPC code, a `Reason` and a human message. Immutable: derive a
    changed copy with `replace()` (or the `with_*` helpers).

    `retry_after` (seconds) is set when the failure says when to come back. `usage` is the
    partial usage known when the failure ended a started stream.
    """

    code: grpc.StatusCode
    reason: Reason
    message: str
    retry_after: float | None = None
    field_violations: Sequence[FieldViolation] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    usage: events_pb2.Usage | None = None

    def __post_init__(self) -> None:
        if type(self.reason) is not Reason:
            self.reason = Reason(self.reason)  # a plain string: known reasons only
        super().__init__(self.message)
        object.__setattr__(self, "metadata", _FrozenMap(self.metadata))
        object.__setattr__(self, "_sealed", True)

    def __setattr__(self, name: str, value: Any) -> None:
        # Exception machinery sets dunders (__traceback__, __notes__): only fields are fixed.
        if name in _FIELDS and getattr(self, "_sealed", False):
            raise dataclasses.FrozenInstanceError(f"MeshError is immutable: cannot set {name}")
        object.__setattr__(self, name, value)

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason.value}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (dataclasses.asdict(self) | {"metadata": dict(self.metadata)},))

    @classmethod
    def of(
        cls,
        reason: Reason,
        message: str,
        *,
        retry_after: float | None = None,
        field_violations: Sequence[FieldViolation] = (),
        metadata: Mapping[str, str] | None = None,
        usage: events_pb2.Usage | None = None,
    ) -> MeshError:
        """An error with the reason's own gRPC code."""
        return cls(
            _ROWS[reason].code,
            reason,
            message,
            retry_after,
            tuple(field_violations),
            metadata or {},
            usage,
        )

    def replace(self, **changes: Any) -> MeshError:
        return dataclasses.replace(self, **changes)

    def with_usage(self, usage: events_pb2.Usage | None) -> MeshError:
        return dataclasses.replace(self, usage=usage)

    def with_metadata(self, **extra: str) -> MeshError:
        return dataclasses.replace(self, metadata={**self.metadata, **extra})

    @property
    def classification(self) -> Classification:
        return classify(self)

    @property
    def retryable(self) -> bool:
        return classify(self).retryable

    @property
    def rate_limited(self) -> bool:
        return self.code is grpc.StatusCode.RESOURCE_EXHAUSTED and self.retry_after is not None

    def to_status(self) -> grpc.Status:
        """A grpc.Status with rich details, for `context.abort_with_status`. Partial usage
        travels as ErrorInfo metadata (`usage.*`), so a unary call that failed mid-stream
        still tells the caller what it spent."""
        details = []
        info = error_details_pb2.ErrorInfo(reason=self.reason.value, domain=DOMAIN)
        info.metadata.update(self.metadata)
        if self.usage is not None:
            info.metadata.update(_usage_metadata(self.usage))
        details.append(info)
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        if self.field_violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in self.field_violations
                    ]
                )
            )
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in details:
            status.details.add().Pack(detail)
        return rpc_status.to_status(status)

    def to_event(self, deployment: str = "") -> events_pb2.StreamError:
        return events_pb2.StreamError(
            code=self.code.value[0],
            reason=self.reason.value,
            message=self.message,
            partial_usage=self.usage,
            deployment=deployment,
        )

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> MeshError:
        """Rebuild a MeshError from a failed call: a sync `grpc.Call` error or a
        `grpc.aio.AioRpcError` (which is not a grpc.Call but has the same accessors)."""
        if not isinstance(err, grpc.Call | grpc.aio.AioRpcError):
            return cls(grpc.StatusCode.UNKNOWN, Reason.UNSPECIFIED, str(err))
        try:
            status = rpc_status.from_call(err)  # type: ignore[arg-type]
        except ValueError:  # details that contradict the code: keep the code, drop details
            status = None
        return cls.from_status(err.code(), err.details() or "", status)

    @classmethod
    def from_status(
        cls, code: grpc.StatusCode, message: str, status: status_pb2.Status | None
    ) -> MeshError:
        reason = Reason.UNSPECIFIED
        retry_after: float | None = None
        violations: list[FieldViolation] = []
        metadata: dict[str, str] = {}
        for any_detail in status.details if status is not None else ():
            if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_detail.Unpack(info)
                reason = reason_from_wire(info.reason)
                metadata.update(info.metadata)
            elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                any_detail.Unpack(retry)
                retry_after = retry.retry_delay.ToNanoseconds() / 1e9
            elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                any_detail.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
        usage = _usage_from_metadata(metadata)
        return cls(code, reason, message, retry_after, tuple(violations), metadata, usage)

    @classmethod
    def from_event(cls, event: events_pb2.StreamError) -> MeshError:
        return cls(
            code_from_int(event.code),
            reason_from_wire(event.reason),
            event.message,
            usage=event.partial_usage if event.HasField("partial_usage") else None,
            metadata={"deployment": event.deployment} if event.deployment else {},
        )


class _FrozenMap(dict[str, str]):
    """A read-only dict (a MeshError's metadata)."""

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise TypeError("MeshError metadata is read-only")

    __setitem__ = _refuse
    __delitem__ = _refuse
    update = _refuse
    pop = _refuse  # type: ignore[assignment]
    popitem = _refuse  # type: ignore[assignment]
    clear = _refuse
    setdefault = _refuse  # type: ignore[assignment]


def _rebuild(fields: dict[str, Any]) -> MeshError:
    return MeshError(**fields)


_USAGE_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_micros",
)


def _usage_metadata(usage: events_pb2.Usage) -> dict[str, str]:
    out = {f"usage.{k}": str(getattr(usage, k)) for k in _USAGE_KEYS}
    out["usage.estimated"] = "1" if usage.estimated else "0"
    return out


def _usage_from_metadata(metadata: dict[str, str]) -> events_pb2.Usage | None:
    if "usage.prompt_tokens" not in metadata:
        return None
    usage = events_pb2.Usage()
    try:
        for k in _USAGE_KEYS:
            setattr(usage, k, int(metadata.pop(f"usage.{k}", "0")))
    except ValueError:
        return None
    usage.estimated = metadata.pop("usage.estimated", "0") == "1"
    return usage


def invalid_argument(field_path: str, description: str) -> MeshError:
    """A bad request naming the offending field."""
    return MeshError.of(
        Reason.INVALID_REQUEST,
        f"{field_path}: {description}",
        field_violations=(FieldViolation(field_path, description),),
    )
