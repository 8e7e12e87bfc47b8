"""An OpenAI caller's prompt_cache_key reaches the backend as the routing affinity key,
through the edge, imesh.Client and a real gRPC router (what a vllm_pool deployment hashes
to pick a replica)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from adapters.backend import Batch
from adapters.config import SimulatedConfig
from adapters.deadline import Deadline
from adapters.simulated import SimulatedBackend
from imesh.client import Client
from imesh.v1 import adapter_service_pb2
from router.config import MeshConfig
from router.server import start_router_server
from router.service import ChatRouter

HI: Any = [{"role": "user", "content": "hi"}]


class RecordingBackend(SimulatedBackend):
    """A simulated provider that keeps each call's affinity key."""

    keys: list[str]

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        self.keys.append(request.input.routing.affinity_key)
        async for batch in super().chat(request, deadline):
            yield batch


async def test_prompt_cache_key_reaches_the_backend_over_grpc(
    make_edge: Callable[..., Any], config_with: Callable[..., MeshConfig]
) -> None:
    config = config_with()
    backends: dict[str, Any] = {}
    for name, provider in config.providers.items():
        assert isinstance(provider, SimulatedConfig)
        backends[name] = RecordingBackend(provider)
        backends[name].keys = []
    router = ChatRouter(config, backends)
    server = await start_router_server(router, "127.0.0.1:0")
    try:
        async with make_edge(Client(f"127.0.0.1:{server.port}")) as edge:
            client = edge.async_openai()
            await client.chat.completions.create(
                model="fast", messages=HI, prompt_cache_key="conversation-42"
            )
            await client.chat.completions.create(model="fast", messages=HI)
    finally:
        await server.stop(0)
        await router.aclose()

    keys = [key for backend in backends.values() for key in backend.keys]
    assert keys == ["conversation-42", ""]
