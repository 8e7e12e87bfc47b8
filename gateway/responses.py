"""Per-request edge state (request id, key, clock) and the raw ASGI sends of JSON replies.

Every response carries `x-request-id` and `x-imesh-edge-overhead-ms`: the time spent in
the edge so far, minus the time spent waiting on the router (and on the caller's body).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import Scope, Send

from gateway.errors import http_error
from imesh.errors import MeshError, Reason

REQUEST_ID = b"x-request-id"
EDGE_OVERHEAD = b"x-imesh-edge-overhead-ms"
_JSON_TYPE = (b"content-type", b"application/json")
JSON_HEADERS: tuple[tuple[bytes, bytes], ...] = (_JSON_TYPE,)
# A caller's request id is echoed only when it is short printable ASCII (it lands in logs,
# headers and the completion id).
_CALLER_ID = re.compile(rb"[\x21-\x7e]{1,128}")
# API keys travel on as gRPC metadata, which takes printable ASCII only.
_KEY = re.compile(rb"[\x21-\x7e]+")
_BEARER = b"bearer "

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Exchange:
    """The edge's view of one HTTP request, from arrival to the last byte sent."""

    t0: float
    request_id: str
    rid_header: bytes
    api_key: str | None
    content_length: bytes | None
    # Seconds spent awaiting the router or the caller's request body; not edge overhead.
    waited_s: float = 0.0
    # The response's status once its start went out; 0 before (what telemetry reports).
    status: int = 0
    # An Authorization header that cannot be a key (not printable ASCII).
    bad_key: bool = False

    @classmethod
    def begin(cls, scope: Scope) -> Exchange:
        t0 = time.perf_counter()
        rid = auth = x_api_key = length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
            elif name == b"x-api-key":
                x_api_key = value
            elif name == b"x-request-id":
                rid = value
            elif name == b"content-length":
                length = value
        if rid is None or _CALLER_ID.fullmatch(rid) is None:
            rid = os.urandom(12).hex().encode()
        key = None
        bad_key = False
        # As the router reads its metadata: a bearer token first, else x-api-key.
        if auth is not None and auth[:7].lower() == _BEARER:
            raw = auth[7:].strip()
            if _KEY.fullmatch(raw) is not None:
                key = raw.decode("ascii")
            else:
                bad_key = bool(raw)
        if key is None and not bad_key and x_api_key is not None:
            raw = x_api_key.strip()
            if _KEY.fullmatch(raw) is not None:
                key = raw.decode("ascii")
            else:
                bad_key = bool(raw)
        return cls(t0, rid.decode("ascii"), rid, key, length, bad_key=bad_key)

    @property
    def started(self) -> bool:
        """True once the response's start went out (a failure can no longer change it)."""
        return self.status != 0

    def overhead_ms(self) -> float:
        return (time.perf_counter() - self.t0 - self.waited_s) * 1000.0

    def headers(
        self, base: Iterable[tuple[bytes, bytes]], extra: Iterable[tuple[bytes, bytes]] = ()
    ) -> Headers:
        """Response headers: base, then the request id and overhead, then extra."""
        out = list(base)
        out.append((REQUEST_ID, self.rid_header))
        out.append((EDGE_OVERHEAD, b"%.3f" % self.overhead_ms()))
        out.extend(extra)
        return out


async def send_json(
    send: Send,
    ex: Exchange,
    status: int,
    body: bytes,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    # What ex.headers(JSON_HEADERS, extra) builds, in one list display.
    headers = [
        _JSON_TYPE,
        (REQUEST_ID, ex.rid_header),
        (EDGE_OVERHEAD, b"%.3f" % ((time.perf_counter() - ex.t0 - ex.waited_s) * 1000.0)),
    ]
    if extra:
        headers.extend(extra)
    headers.append((b"content-length", b"%d" % len(body)))
    ex.status = status
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def malformed_key() -> MeshError:
    return MeshError.of(Reason.INVALID_API_KEY, "the API key is malformed")


async def send_error(send: Send, ex: Exchange, exc: BaseException) -> None:
    """Answer with the OpenAI error body and status for any failure (see gateway.errors)."""
    err = http_error(exc)
    await send_json(send, ex, err.status, err.body, err.headers)
