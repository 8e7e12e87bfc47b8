"""AdapterService + RemoteBackend: a served adapter behaves exactly like the in-process one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from adapters.backend import Backend, Batch
from adapters.config import RemoteConfig, SimulatedConfig
from adapters.deadline import NO_DEADLINE, Deadline
from adapters.remote import RemoteBackend
from adapters.service import AdapterServer, start_adapter_server
from adapters.simulated import SimulatedBackend
from imesh.errors import MeshError, Reason
from imesh.v1 import adapter_service_pb2, adapter_service_pb2_grpc, chat_pb2, events_pb2
from tests.adapters.fakes.helpers import collect_batches
from tests.support.hop import TOKEN_METADATA, adapter_security, service_token


def sim_config(**overrides: Any) -> SimulatedConfig:
    fields: dict[str, Any] = {"kind": "simulated", "ttft_ms": 0, "tokens_per_second": 5000}
    fields.update(overrides)
    return SimulatedConfig(**fields)


def request(text: str = "Tell me a story", **fields: Any) -> adapter_service_pb2.GenerateRequest:
    chat_input = chat_pb2.ChatInput(
        model="m",
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=text)])
        ],
        **fields,
    )
    return adapter_service_pb2.GenerateRequest(input=chat_input, provider_model="sim-1")


class Served:
    """A real adapter server on a free port plus a RemoteBackend pointed at it."""

    def __init__(self, backend: Backend, server: AdapterServer, remote: RemoteBackend) -> None:
        self.backend = backend
        self.server = server
        self.remote = remote
        self.address = f"127.0.0.1:{server.port}"


async def serve(backend: Backend) -> Served:
    server = await start_adapter_server(backend, "127.0.0.1:0", adapter_security())
    address = f"127.0.0.1:{server.port}"
    remote = RemoteBackend(RemoteConfig(kind="remote", address=address, token=service_token()))
    return Served(backend, server, remote)


async def stop(served: Served) -> None:
    await served.remote.aclose()
    await served.server.stop(0)


async def collect(
    backend: Backend, req: adapter_service_pb2.GenerateRequest, deadline: Deadline = NO_DEADLINE
) -> tuple[list[events_pb2.ChatEvent], MeshError | None]:
    events: list[events_pb2.ChatEvent] = []
    try:
        async for batch in backend.chat(req, deadline):
            events.extend(batch)
    except MeshError as err:
        return events, err
    return events, None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def sim_served() -> AsyncIterator[Served]:
    served = await serve(SimulatedBackend(sim_config(seed=5, completion_tokens=30)))
    try:
        yield served
    finally:
        await stop(served)


TOOL = chat_pb2.Tool(
    name="get_weather",
    parameters_json=json.dumps(
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    ),
)


@pytest.mark.parametrize(
    "req",
    [
        request(),
        request(max_tokens=7),
        request(tools=[TOOL], tool_choice=chat_pb2.ToolChoice(function_name="get_weather")),
        request(
            response_format=chat_pb2.ResponseFormat(type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
        ),
    ],
    ids=["text", "max_tokens", "tool_call", "json_object"],
)
async def test_remote_backend_yields_the_same_events_as_in_process(
    sim_served: Served, req: adapter_service_pb2.GenerateRequest
) -> None:
    local = SimulatedBackend(sim_config(seed=5, completion_tokens=30))
    expected, local_err = await collect(local, req)
    got, remote_err = await collect(sim_served.remote, req)
    assert local_err is None
    assert remote_err is None
    assert got == expected


@pytest.mark.parametrize(
    ("kind", "code", "reason", "retry_after"),
    [
        ("unavailable", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", None),
        ("rate_limited", grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", 2.5),
        ("internal", grpc.StatusCode.INTERNAL, "UPSTREAM_UNAVAILABLE", None),
    ],
)
async def test_errors_keep_code_reason_and_retry_after_across_the_hop(
    kind: str, code: grpc.StatusCode, reason: str, retry_after: float | None
) -> None:
    served = await serve(
        SimulatedBackend(sim_config(error_rate=1.0, error_kind=kind, retry_after_s=2.5))
    )
    try:
        events, err = await collect(served.remote, request())
    finally:
        await stop(served)
    assert events == []
    assert err is not None
    assert (err.code, err.reason, err.retry_after) == (code, reason, retry_after)


async def test_cut_after_output_relays_usage_then_the_error() -> None:
    served = await serve(SimulatedBackend(sim_config(cut_after_tokens=6, completion_tokens=30)))
    try:
        events, err = await collect(served.remote, request())
    finally:
        await stop(served)
    assert sum(1 for e in events if e.HasField("content")) == 6
    assert events[-1].HasField("usage")
    assert events[-1].usage.completion_tokens == 6
    assert err is not None
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERRUPTED")
    assert err.usage is not None
    assert err.usage.completion_tokens == 6


class SignallingBackend(SimulatedBackend):
    """Sets `cancelled` when a call ends by cancellation, so tests await it."""

    def __init__(self, config: SimulatedConfig) -> None:
        super().__init__(config)
        self.cancelled = asyncio.Event()

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        try:
            async with contextlib.aclosing(super().chat(request, deadline)) as batches:  # type: ignore[type-var]
                async for batch in batches:
                    yield batch
        finally:
            if self.calls_cancelled:
                self.cancelled.set()


async def test_closing_the_remote_iterator_cancels_the_backend_within_100ms() -> None:
    backend = SignallingBackend(sim_config(tokens_per_second=20, completion_tokens=100))
    served = await serve(backend)
    try:
        stream = served.remote.chat(request(), NO_DEADLINE)
        await anext(stream)
        assert backend.calls_cancelled == 0
        closed_at = time.monotonic()
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(backend.cancelled.wait(), timeout=0.1)
        assert backend.calls_cancelled == 1
        assert backend.last_cancelled_at is not None
        assert backend.last_cancelled_at - closed_at < 0.1
    finally:
        await stop(served)


async def test_caller_deadline_reaches_the_served_backend() -> None:
    backend = SimulatedBackend(sim_config(stall_after_tokens=2, completion_tokens=30))
    served = await serve(backend)
    try:
        start = time.monotonic()
        _, err = await collect(served.remote, request(), deadline=Deadline(start + 0.3))
    finally:
        await stop(served)
    assert err is not None
    assert err.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 2.0


async def test_unreachable_adapter_is_unavailable() -> None:
    address = f"127.0.0.1:{free_port()}"
    remote = RemoteBackend(RemoteConfig(kind="remote", address=address, token=service_token()))
    try:
        events, err = await collect(remote, request(), deadline=Deadline.after(5))
    finally:
        await remote.aclose()
    assert events == []
    assert err is not None
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "ADAPTER_UNAVAILABLE")


async def test_each_batch_of_the_backend_is_one_message(sim_served: Served) -> None:
    fast = SimulatedBackend(sim_config(tokens_per_second=50_000, completion_tokens=300))
    served = await serve(fast)
    try:
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = adapter_service_pb2_grpc.AdapterServiceStub(channel)
            responses = [r async for r in stub.Generate(request(), metadata=TOKEN_METADATA)]
    finally:
        await stop(served)
    events = sum(len(r.events) for r in responses)
    assert events == 302  # 300 tokens, usage, finish
    assert len(responses) < events / 3
    local, _ = await collect_batches(
        SimulatedBackend(sim_config(tokens_per_second=50_000, completion_tokens=300)), request()
    )
    assert len(local) < events / 3


async def test_first_event_is_sent_without_waiting_for_the_next() -> None:
    slow = SimulatedBackend(sim_config(tokens_per_second=2, completion_tokens=5))
    served = await serve(slow)
    try:
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = adapter_service_pb2_grpc.AdapterServiceStub(channel)
            call = stub.Generate(request(), metadata=TOKEN_METADATA)
            start = time.monotonic()
            first = await anext(aiter(call))
            waited = time.monotonic() - start
            call.cancel()
    finally:
        await stop(served)
    assert len(first.events) == 1
    assert waited < 0.4  # the second token is due 0.5 s later


class BrokenBackend(Backend):
    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        yield [events_pb2.ChatEvent(content=events_pb2.ContentDelta(text=" hi"))]
        raise RuntimeError("bug with a secret sk-123 inside")


async def test_unexpected_backend_failure_is_internal_and_hides_details() -> None:
    served = await serve(BrokenBackend())
    try:
        events, err = await collect(served.remote, request())
    finally:
        await stop(served)
    assert [e.content.text for e in events] == [" hi"]
    assert err is not None
    assert (err.code, err.reason) == (grpc.StatusCode.INTERNAL, "BACKEND_CRASHED")
    assert "sk-123" not in err.message


async def test_server_reports_serving_and_offers_reflection(sim_served: Served) -> None:
    async with grpc.aio.insecure_channel(sim_served.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="imesh.v1.AdapterService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(metadata=TOKEN_METADATA)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await call.read()
        await call.done_writing()
        names = {s.name for s in answer.list_services_response.service}
    assert "imesh.v1.AdapterService" in names


async def test_channels_are_spread_round_robin(sim_served: Served) -> None:
    remote = RemoteBackend(
        RemoteConfig(kind="remote", address=sim_served.address, channels=3, token=service_token())
    )
    try:
        for _ in range(4):
            _, err = await collect(remote, request())
            assert err is None
        # Each channel carried a call; a fourth reuses the first.
        assert len(remote._channels) == 3
        states = [c.get_state() for c in remote._channels]
    finally:
        await remote.aclose()
    assert all(s is grpc.ChannelConnectivity.READY for s in states)


class LongMessageBackend(Backend):
    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        raise MeshError.of(
            Reason.UPSTREAM_RATE_LIMITED,
            "openai: HTTP 429: " + "é" * 10_000,
            retry_after=2.5,
            metadata={"provider": "openai"},
        )
        yield  # pragma: no cover - makes this an async generator


async def test_a_long_error_message_keeps_code_reason_and_retry_after_across_the_hop() -> None:
    # gRPC drops trailers over its metadata limit, and the status details with them.
    served = await serve(LongMessageBackend())
    try:
        events, err = await collect(served.remote, request())
    finally:
        await stop(served)
    assert events == []
    assert err is not None
    assert (err.code, err.reason, err.retry_after) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_RATE_LIMITED",
        2.5,
    )
    assert err.message.startswith("openai: HTTP 429: é")
    assert err.metadata["provider"] == "openai"
