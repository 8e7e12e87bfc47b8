"""The edge on a free port over a real ChatRouter with SimulatedBackends, and a scripted fake.

`running_edge(api_or_config)` serves the edge in the test's loop; tests drive it with the
official openai SDK (max_retries=0) or raw httpx. Fakes sit at the ChatAPI seam only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from adapters.simulated import SimulatedBackend
from gateway.server import GatewayServer, start_gateway
from gateway.settings import GatewaySettings
from imesh.api import CallContext, ChatAPI
from imesh.errors import MeshError
from imesh.v1 import chat_pb2, chat_service_pb2, events_pb2
from router.config import MeshConfig, parse_config
from router.recorder import AttemptRecord, RequestRecord
from router.service import ChatRouter

KEY = "sk-test-key"
_SIM = {"kind": "simulated", "ttft_ms": 0, "tokens_per_second": 5000, "completion_tokens": 12}
# Provider name -> overrides of _SIM; each gets a deployment of the same name.
PROVIDERS: dict[str, dict[str, Any]] = {
    "sim-fast": {},
    # 20 tokens/s: frames 50 ms apart, for the flush-as-produced test.
    "sim-paced": {"tokens_per_second": 20, "completion_tokens": 6},
    "sim-stall": {"stall_after_tokens": 2},
    "sim-cut": {"cut_after_tokens": 3},
    "sim-429": {"error_rate": 1.0, "error_kind": "rate_limited", "retry_after_s": 2.2},
    "sim-500": {"error_rate": 1.0, "error_kind": "internal"},
    "sim-503": {"error_rate": 1.0, "error_kind": "unavailable"},
    "sim-slow": {"ttft_ms": 5000},
}
CAPS = ["streaming", "tools", "json_schema", "vision"]


def mesh_config(*, key_hashes: Sequence[str] = (), **router: Any) -> MeshConfig:
    """Every PROVIDERS entry as a deployment, an alias "fast", and no retries (one attempt
    per call, so each error test sees exactly one upstream failure)."""
    data: dict[str, Any] = {
        "providers": {name: {**_SIM, **extra} for name, extra in PROVIDERS.items()},
        "deployments": [
            {"name": name, "provider": name, "model": f"{name}-1", "capabilities": CAPS}
            for name in PROVIDERS
        ],
        "aliases": {"fast": {"candidates": ["sim-fast"], "retry": {"max_attempts": 1}}},
        "router": {
            "api_key_hashes": list(key_hashes),
            "breaker": {"consecutive_failures": 1, "open_s": 30},
            **router,
        },
        "gateway": {"max_body_bytes": 64 * 1024},
    }
    return parse_config(data)


@dataclass
class RecordingSink:
    records: list[AttemptRecord] = field(default_factory=list)

    def record_attempt(self, record: AttemptRecord) -> None:
        self.records.append(record)

    def record_request(self, record: RequestRecord) -> None:
        pass


@dataclass
class Edge:
    """A running edge and what sits behind it."""

    server: GatewayServer
    api: ChatAPI
    backends: dict[str, SimulatedBackend]
    sink: RecordingSink
    # Clients handed out, closed at teardown (unclosed sockets are errors here).
    clients: list[OpenAI | AsyncOpenAI | httpx.AsyncClient] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def openai(self, api_key: str = KEY) -> OpenAI:
        client = OpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0)
        self.clients.append(client)
        return client

    def async_openai(self, api_key: str = KEY) -> AsyncOpenAI:
        client = AsyncOpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0)
        self.clients.append(client)
        return client

    def http(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=self.base_url, timeout=10)
        self.clients.append(client)
        return client

    async def close_clients(self) -> None:
        for client in self.clients:
            if isinstance(client, OpenAI):
                client.close()
            else:
                await client.aclose() if isinstance(
                    client, httpx.AsyncClient
                ) else await client.close()


def build_router(
    config: MeshConfig,
) -> tuple[ChatRouter, dict[str, SimulatedBackend], RecordingSink]:
    backends = {name: SimulatedBackend(p) for name, p in config.providers.items()}  # type: ignore[arg-type]
    sink = RecordingSink()
    return ChatRouter(config, backends, sinks=[sink]), backends, sink


@asynccontextmanager
async def running_edge(
    target: MeshConfig | ChatAPI | None = None, settings: GatewaySettings | None = None
) -> AsyncIterator[Edge]:
    """The edge on 127.0.0.1:0 over a ChatRouter built from a config, or over any ChatAPI."""
    config = mesh_config() if target is None else target
    backends: dict[str, SimulatedBackend] = {}
    sink = RecordingSink()
    if isinstance(config, MeshConfig):
        api: ChatAPI
        api, backends, sink = build_router(config)
        settings = settings or config.gateway
    else:
        api = config
    server = await start_gateway(api, settings or GatewaySettings(), "127.0.0.1:0")
    running = Edge(server, api, backends, sink)
    try:
        yield running
    finally:
        await running.close_clients()
        await server.stop()
        await api.aclose()


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    async with running_edge() as running:
        yield running


@pytest.fixture
async def keyed_edge() -> AsyncIterator[Edge]:
    from router.auth import hash_api_key

    async with running_edge(mesh_config(key_hashes=[hash_api_key(KEY)])) as running:
        yield running


async def wait_until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    """Await a condition another task makes true (the simulator's counters have no event
    to await, so poll); fails after `within_s`."""
    for _ in range(int(within_s / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"condition not met within {within_s}s")


class FakeChatAPI:
    """A ChatAPI that plays `events` (or `batches`; then raises `error`, if any), or raises
    `error` at once when there are none. Records each CallContext and whether a stream was
    closed early."""

    def __init__(
        self,
        events: Sequence[events_pb2.ChatEvent] = (),
        error: MeshError | None = None,
        models: chat_service_pb2.ListModelsResponse | None = None,
        batches: Sequence[Sequence[events_pb2.ChatEvent]] = (),
    ) -> None:
        self.events = [e for b in batches for e in b] if batches else list(events)
        self.batches = [list(b) for b in batches]
        self.error = error
        self.models = models or chat_service_pb2.ListModelsResponse()
        self.contexts: list[CallContext] = []
        self.inputs: list[chat_pb2.ChatInput] = []
        self.closed_early = 0

    async def chat_batches(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncIterator[Sequence[events_pb2.ChatEvent]]:
        """Each scripted event as its own batch, unless `batches` grouped them."""
        self.contexts.append(ctx)
        self.inputs.append(request)
        finished = False
        try:
            for batch in self.batches or [[e] for e in self.events]:
                yield batch
            finished = True
        finally:
            if not finished:
                self.closed_early += 1
        if self.error is not None:
            raise self.error

    async def chat_stream(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> AsyncIterator[events_pb2.ChatEvent]:
        async for batch in self.chat_batches(request, ctx):
            for event in batch:
                yield event

    async def chat(
        self, request: chat_pb2.ChatInput, ctx: CallContext
    ) -> chat_service_pb2.ChatResponse:
        from router.service import aggregate

        return await aggregate(self.chat_batches(request, ctx))

    async def list_models(self, ctx: CallContext) -> chat_service_pb2.ListModelsResponse:
        self.contexts.append(ctx)
        if self.error is not None and not self.events:
            raise self.error
        return self.models

    async def ready(self) -> bool:
        if self.error is not None and not self.events:
            return False  # the router "fails"
        closed = chat_service_pb2.BREAKER_STATE_CLOSED
        return any(d.breaker_state == closed for d in self.models.deployments)

    async def aclose(self) -> None:
        return None


@pytest.fixture
def make_edge() -> Callable[..., Any]:
    """`async with make_edge(config_or_api, settings) as edge:` for tests needing their own."""
    return running_edge


@pytest.fixture
def fake_api() -> type[FakeChatAPI]:
    return FakeChatAPI


@pytest.fixture
def until() -> Callable[..., Any]:
    """`await until(predicate)`: wait for another task to make a condition true."""
    return wait_until


@pytest.fixture
def config_with() -> Callable[..., MeshConfig]:
    return mesh_config
