"""AdapterServicer without a socket (grpcio-testing): batches relayed one message each, the
caller's deadline handed to the backend, failures as statuses with details, cancellation
closing the backend's stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
import grpc_testing
import pytest

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from adapters.service import AdapterServicer
from imesh.errors import MeshError, Reason
from imesh.v1 import adapter_service_pb2, chat_pb2, events_pb2
from tests.support.aio_servicer import LoopThread, status_error, sync_servicer

SERVICE = adapter_service_pb2.DESCRIPTOR.services_by_name["AdapterService"]
GENERATE = SERVICE.methods_by_name["Generate"]
REQUEST = adapter_service_pb2.GenerateRequest(
    input=chat_pb2.ChatInput(model="m"), provider_model="pm"
)


def text(t: str) -> events_pb2.ChatEvent:
    return events_pb2.ChatEvent(content=events_pb2.ContentDelta(text=t))


class ScriptedBackend(Backend):
    def __init__(
        self,
        batches: Sequence[Batch] = (),
        error: BaseException | None = None,
        hang: bool = False,
    ) -> None:
        self.batches = batches
        self.error = error
        self.hang = hang
        self.deadlines: list[Deadline] = []
        self.streaming = asyncio.Event()
        self.closed = asyncio.Event()

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        self.deadlines.append(deadline)
        try:
            for batch in self.batches:
                yield batch
            self.streaming.set()
            if self.hang:
                await asyncio.Event().wait()
            if self.error is not None:
                raise self.error
        finally:
            self.closed.set()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.close()


def generate(backend: Backend, loop: LoopThread, timeout: float | None = None) -> Any:
    servicer = sync_servicer(AdapterServicer(backend), SERVICE, loop)
    server = grpc_testing.server_from_dictionary(
        {SERVICE: servicer}, grpc_testing.strict_real_time()
    )
    return server.invoke_unary_stream(GENERATE, (), REQUEST, timeout)


def test_each_backend_batch_is_one_message(loop: LoopThread) -> None:
    rpc = generate(ScriptedBackend([[text("a"), text("b")], [text("c")]]), loop)
    first, second = rpc.take_response(), rpc.take_response()
    assert [len(first.events), len(second.events)] == [2, 1]
    _, code, _ = rpc.termination()
    assert code is grpc.StatusCode.OK


def test_the_callers_deadline_reaches_the_backend(loop: LoopThread) -> None:
    backend = ScriptedBackend([[text("a")]])
    rpc = generate(backend, loop, timeout=20)
    rpc.take_response()
    rpc.termination()
    [deadline] = backend.deadlines
    assert deadline.bounded
    assert 0 < deadline.remaining() <= 20


def test_a_backend_error_becomes_its_status_with_details_and_retry_after(
    loop: LoopThread,
) -> None:
    error = MeshError.of(Reason.UPSTREAM_RATE_LIMITED, "slow down", retry_after=3.0)
    rpc = generate(ScriptedBackend(error=error), loop)
    trailing, code, details = rpc.termination()
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    rebuilt = status_error(trailing, code, details)
    assert (rebuilt.reason, rebuilt.retry_after) == (Reason.UPSTREAM_RATE_LIMITED, 3.0)


def test_a_long_error_message_is_cut_to_fit_the_trailers(loop: LoopThread) -> None:
    error = MeshError.of(Reason.UPSTREAM_BAD_REQUEST, "x" * 100_000)
    rpc = generate(ScriptedBackend(error=error), loop)
    trailing, code, details = rpc.termination()
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert len(details.encode()) < 10_000
    assert status_error(trailing, code, details).reason is Reason.UPSTREAM_BAD_REQUEST


def test_a_backend_crash_is_internal_without_its_message(loop: LoopThread) -> None:
    rpc = generate(ScriptedBackend(error=ValueError("secret detail")), loop)
    trailing, code, details = rpc.termination()
    assert code is grpc.StatusCode.INTERNAL
    assert "secret" not in details
    assert status_error(trailing, code, details).reason is Reason.BACKEND_CRASHED


def test_cancelling_the_call_closes_the_backends_stream(loop: LoopThread) -> None:
    backend = ScriptedBackend([[text("a")]], hang=True)
    rpc = generate(backend, loop)
    rpc.take_response()
    asyncio.run_coroutine_threadsafe(backend.streaming.wait(), loop.loop).result(5)
    rpc.cancel()
    asyncio.run_coroutine_threadsafe(backend.closed.wait(), loop.loop).result(5)
