"""imesh.Client and SyncClient against a real router server on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import imesh
from adapters.backend import Backend, Batch
from adapters.config import SimulatedConfig
from adapters.deadline import Deadline
from adapters.simulated import SimulatedBackend
from imesh.v1 import adapter_service_pb2, chat_pb2, events_pb2
from router.config import parse_config
from router.server import RouterServer, start_router_server
from router.service import ChatRouter

API_KEY = "test-key-1"


class SignallingBackend(SimulatedBackend):
    """Sets `cancelled` once a call ended by cancellation, so tests can await it."""

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


def sim(**overrides: Any) -> SignallingBackend:
    fields: dict[str, Any] = {"kind": "simulated", "ttft_ms": 0, "tokens_per_second": 5000}
    fields.update(overrides)
    return SignallingBackend(SimulatedConfig(**fields))


class Mesh:
    """A router server on a free port over simulated backends the test can inspect."""

    def __init__(self, server: RouterServer, chat_router: ChatRouter, backends: dict[str, Backend]):
        self.server = server
        self.router = chat_router
        self.backends = backends
        self.address = f"127.0.0.1:{server.port}"


def mesh_config(api_key_hashes: list[str]) -> Any:
    return parse_config(
        {
            "providers": {
                "fast": {"kind": "simulated", "ttft_ms": 0, "tokens_per_second": 5000},
                "slow": {"kind": "simulated", "ttft_ms": 0, "tokens_per_second": 20},
                "cut": {"kind": "simulated", "ttft_ms": 0, "cut_after_tokens": 3},
            },
            "deployments": [
                {
                    "name": "fast-1",
                    "provider": "fast",
                    "model": "fast-model",
                    "capabilities": ["streaming", "tools", "json_schema"],
                    "price": {"input": 1, "output": 2},
                },
                {"name": "slow-1", "provider": "slow", "model": "slow-model"},
                {"name": "cut-1", "provider": "cut", "model": "cut-model"},
            ],
            "aliases": {"quick": {"candidates": ["fast-1"]}},
            "router": {"api_key_hashes": api_key_hashes},
        }
    )


async def start_mesh(api_key_hashes: list[str] | None = None) -> Mesh:
    config = mesh_config(api_key_hashes or [])
    backends: dict[str, Backend] = {
        "fast": sim(seed=1),
        "slow": sim(tokens_per_second=20, completion_tokens=200),
        "cut": sim(cut_after_tokens=3),
    }
    chat_router = ChatRouter(config, backends)
    server = await start_router_server(chat_router, "127.0.0.1:0")
    return Mesh(server, chat_router, backends)


async def stop_mesh(mesh: Mesh) -> None:
    await mesh.server.stop(0)
    await mesh.router.aclose()


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    running = await start_mesh()
    try:
        yield running
    finally:
        await stop_mesh(running)


def ask(model: str = "quick", text: str = "Say something", **fields: Any) -> chat_pb2.ChatInput:
    return chat_pb2.ChatInput(model=model, messages=[imesh.user(text)], **fields)


async def drain(
    stream: AsyncIterator[events_pb2.ChatEvent], into: list[events_pb2.ChatEvent]
) -> None:
    async for event in stream:
        into.append(event)


async def test_chat_stream_yields_start_deltas_usage_and_finish(mesh: Mesh) -> None:
    async with imesh.Client(mesh.address) as client:
        events = [e async for e in client.chat_stream(ask(), imesh.CallContext(request_id="r-1"))]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "start"
    assert events[0].start.request_id == "r-1"
    assert events[0].start.deployment == "fast-1"
    assert events[0].start.provider_model == "fast-model"
    assert "content" in kinds
    assert kinds[-2:] == ["usage", "finish"]
    usage = next(e.usage for e in events if e.HasField("usage"))
    assert usage.completion_tokens == 64
    assert usage.cost_micros > 0


async def test_unary_chat_returns_the_same_text_as_the_stream(mesh: Mesh) -> None:
    async with imesh.Client(mesh.address) as client:
        streamed = "".join(
            [e.content.text async for e in client.chat_stream(ask()) if e.HasField("content")]
        )
        response = await client.chat(ask())
    assert response.deployment == "fast-1"
    assert response.message.content[0].text == streamed
    assert response.finish_reason == events_pb2.FINISH_REASON_STOP
    assert response.usage.completion_tokens == 64


async def test_chat_text_returns_the_answer_text(mesh: Mesh) -> None:
    async with imesh.Client(mesh.address) as client:
        text = await client.chat_text("quick", "Say something", max_tokens=4)
    assert len(text.split()) == 4


async def test_list_models_lists_aliases_and_deployments(mesh: Mesh) -> None:
    async with imesh.Client(mesh.address) as client:
        models = await client.list_models()
    assert [a.name for a in models.aliases] == ["quick"]
    assert {d.name for d in models.deployments} == {"fast-1", "slow-1", "cut-1"}
    fast = next(d for d in models.deployments if d.name == "fast-1")
    assert fast.price.output_micros_per_mtok == 2_000_000


async def test_api_key_travels_as_bearer_metadata() -> None:
    key_hash = "sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()
    running = await start_mesh([key_hash])
    try:
        async with imesh.Client(running.address) as anonymous:
            with pytest.raises(imesh.MeshError) as missing:
                await anonymous.list_models()
        async with imesh.Client(running.address, api_key=API_KEY) as keyed:
            models = await keyed.list_models()
            # A per-call key overrides the client's.
            with pytest.raises(imesh.MeshError) as wrong:
                await keyed.chat(ask(), imesh.CallContext(api_key="wrong"))
    finally:
        await stop_mesh(running)
    assert missing.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert missing.value.reason == "MISSING_API_KEY"
    assert models.deployments
    assert wrong.value.reason == "INVALID_API_KEY"


async def test_error_after_output_is_yielded_then_raised_with_partial_usage(mesh: Mesh) -> None:
    events: list[events_pb2.ChatEvent] = []
    async with imesh.Client(mesh.address) as client:
        with pytest.raises(imesh.MeshError) as caught:
            await drain(client.chat_stream(ask("cut-1")), events)
    assert events[-1].HasField("error")
    err = caught.value
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERRUPTED")
    assert err.usage is not None
    assert err.usage.completion_tokens == 3
    assert sum(1 for e in events if e.HasField("content")) == 3


async def test_closing_the_stream_cancels_the_backend(mesh: Mesh) -> None:
    slow = mesh.backends["slow"]
    assert isinstance(slow, SignallingBackend)
    async with imesh.Client(mesh.address) as client:
        stream = client.chat_stream(ask("slow-1"))
        async for event in stream:
            if event.HasField("content"):
                break
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(slow.cancelled.wait(), timeout=1.0)
    assert slow.calls_cancelled == 1


async def test_client_timeout_ends_the_call_with_deadline_exceeded(mesh: Mesh) -> None:
    async with imesh.Client(mesh.address, timeout=0.3) as client:
        with pytest.raises(imesh.MeshError) as caught:
            await drain(client.chat_stream(ask("slow-1")), [])
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_unreachable_router_raises_unavailable() -> None:
    async with imesh.Client(f"127.0.0.1:{free_port()}", timeout=5) as client:
        with pytest.raises(imesh.MeshError) as caught:
            await client.list_models()
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


async def test_given_channel_is_used_and_left_open(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        async with imesh.Client("ignored:1", channel=channel) as client:
            models = await client.list_models()
        assert models.aliases
        # Still usable: the client did not close a channel it does not own.
        async with imesh.Client("ignored:1", channel=channel) as again:
            assert (await again.list_models()).aliases


async def test_sync_client_chats_streams_and_lists_models(mesh: Mesh) -> None:
    def use_sync() -> tuple[str, str, int, int]:
        with imesh.SyncClient(mesh.address) as client:
            unary = client.chat(ask()).message.content[0].text
            streamed = "".join(e.content.text for e in client.chat_stream(ask()))
            aliases = len(client.list_models().aliases)
            first_two = 0
            for event in client.chat_stream(ask("slow-1")):
                first_two += event.HasField("content")
                if first_two == 2:
                    break  # leaving early must cancel the call
        return unary, streamed, aliases, first_two

    unary, streamed, aliases, first_two = await asyncio.to_thread(use_sync)
    assert unary == streamed
    assert aliases == 1
    assert first_two == 2
    slow = mesh.backends["slow"]
    assert isinstance(slow, SignallingBackend)
    await asyncio.wait_for(slow.cancelled.wait(), timeout=1.0)


async def test_sync_client_raises_mesh_errors(mesh: Mesh) -> None:
    def fail() -> imesh.MeshError:
        with imesh.SyncClient(mesh.address) as client, pytest.raises(imesh.MeshError) as caught:
            list(client.chat_stream(ask("cut-1")))
        return caught.value

    err = await asyncio.to_thread(fail)
    assert err.reason == "UPSTREAM_INTERRUPTED"


async def test_sync_client_close_ends_a_stream_left_open_without_stray_tasks(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    def leave_open() -> None:
        client = imesh.SyncClient(mesh.address)
        events = client.chat_stream(ask("slow-1"))
        next(events)
        next(events)
        client.close()  # while the stream is still running
        events.close()  # type: ignore[attr-defined]  # its generator ends after the client
        gc.collect()  # drops an unclosed call, whose cleanup would need the closed loop

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        await asyncio.to_thread(leave_open)
    slow = mesh.backends["slow"]
    assert isinstance(slow, SignallingBackend)
    await asyncio.wait_for(slow.cancelled.wait(), timeout=1.0)
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


async def test_sync_client_close_from_another_thread_ends_a_blocked_reader(mesh: Mesh) -> None:
    def close_while_reading() -> tuple[bool, BaseException | None]:
        client = imesh.SyncClient(mesh.address)
        started = threading.Event()
        failure: list[BaseException] = []

        def read() -> None:
            try:
                for _ in client.chat_stream(ask("slow-1")):
                    started.set()
            except BaseException as exc:  # what the reader sees when the client closes
                failure.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert started.wait(5)
        client.close()
        reader.join(5)
        return reader.is_alive(), failure[0] if failure else None

    still_blocked, failure = await asyncio.to_thread(close_while_reading)
    assert not still_blocked
    assert isinstance(failure, imesh.MeshError)
    assert (failure.code, failure.reason) == (grpc.StatusCode.CANCELLED, "CLIENT_CLOSED")


def test_message_builders_set_role_and_text() -> None:
    assert imesh.user("hi") == chat_pb2.Message(
        role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="hi")]
    )
    assert imesh.system("be brief").role == chat_pb2.ROLE_SYSTEM
    assert imesh.assistant("ok").role == chat_pb2.ROLE_ASSISTANT


def test_import_imesh_does_not_load_grpc() -> None:
    code = "import sys, imesh; assert 'grpc' not in sys.modules, 'grpc imported'; imesh.Client"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
