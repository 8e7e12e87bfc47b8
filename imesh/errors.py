"""MeshError: the one error type of the mesh, and its round trip through a gRPC status.

Backends raise it, the router raises it, the typed client raises it from a status. The
status carries google.rpc details: ErrorInfo (machine reason), RetryInfo (cool-down),
BadRequest (field violations). Mapping to HTTP lives in the gateway, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from imesh.v1 import events_pb2

DOMAIN = "imesh.dev"

# Codes worth another attempt on another (or the same) deployment, before the first token.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)

_BY_VALUE: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def code_from_int(value: int) -> grpc.StatusCode:
    return _BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass
class MeshError(Exception):
    """A failure with a gRPC code, a machine reason and a human message.

    `retry_after` (seconds) is set when the failure says when to come back (a provider 429).
    `usage` is the partial usage known when the failure ended a started stream.
    """

    code: grpc.StatusCode
    reason: str
    message: str
    retry_after: float | None = None
    field_violations: Sequence[FieldViolation] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    usage: events_pb2.Usage | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES

    @property
    def rate_limited(self) -> bool:
        return self.code is grpc.StatusCode.RESOURCE_EXHAUSTED and self.retry_after is not None

    def to_status(self) -> grpc.Status:
        """A grpc.Status with rich details, for `context.abort_with_status`."""
        details = []
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)
        info.metadata.update(self.metadata)
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
            reason=self.reason,
            message=self.message,
            partial_usage=self.usage,
            deployment=deployment,
        )

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> MeshError:
        """Rebuild a MeshError from a failed call: a sync `grpc.Call` error or a
        `grpc.aio.AioRpcError` (which is not a grpc.Call but has the same accessors)."""
        if not isinstance(err, grpc.Call | grpc.aio.AioRpcError):
            return cls(grpc.StatusCode.UNKNOWN, "UNKNOWN", str(err))
        try:
            status = rpc_status.from_call(err)  # type: ignore[arg-type]
        except ValueError:  # details that contradict the code: keep the code, drop details
            status = None
        return cls.from_status(err.code(), err.details() or "", status)

    @classmethod
    def from_status(
        cls, code: grpc.StatusCode, message: str, status: status_pb2.Status | None
    ) -> MeshError:
        reason = code.name
        retry_after: float | None = None
        violations: list[FieldViolation] = []
        metadata: dict[str, str] = {}
        for any_detail in status.details if status is not None else ():
            if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_detail.Unpack(info)
                reason = info.reason or reason
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
        return cls(code, reason, message, retry_after, tuple(violations), metadata)

    @classmethod
    def from_event(cls, event: events_pb2.StreamError) -> MeshError:
        return cls(
            code_from_int(event.code),
            event.reason,
            event.message,
            usage=event.partial_usage if event.HasField("partial_usage") else None,
            metadata={"deployment": event.deployment} if event.deployment else {},
        )


def invalid_argument(field_path: str, description: str) -> MeshError:
    """A bad request naming the offending field."""
    return MeshError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        f"{field_path}: {description}",
        field_violations=(FieldViolation(field_path, description),),
    )
