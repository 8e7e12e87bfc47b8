"""The deployed-apart path: edge -> imesh.Client -> real gRPC router server -> simulated
providers, both embedded (start_gateway over a Client) and as `run_standalone` workers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest

from imesh.client import Client
from router.server import start_router_server

HI: Any = [{"role": "user", "content": "hi"}]


@asynccontextmanager
async def grpc_router(config_with) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    from adapters.simulated import SimulatedBackend
    from router.service import ChatRouter

    config = config_with()
    backends = {name: SimulatedBackend(p) for name, p in config.providers.items()}
    router = ChatRouter(config, backends)
    server = await start_router_server(router, "127.0.0.1:0")
    try:
        yield f"127.0.0.1:{server.port}", backends
    finally:
        await server.stop(0)
        await router.aclose()


async def test_sdk_through_edge_over_grpc_client_streams_and_maps_errors(
    make_edge, config_with, until
) -> None:
    async with grpc_router(config_with) as (address, backends), make_edge(Client(address)) as edge:
        client = edge.async_openai()
        completion = await client.chat.completions.create(model="fast", messages=HI)
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 12

        stream = await client.chat.completions.create(
            model="fast", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 12

        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=HI)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="sim-429", messages=HI)
        # RetryInfo survived the gRPC hop and became Retry-After.
        assert caught.value.response.headers["retry-after"] == "3"
        with pytest.raises(openai.APIError):
            async for _ in await client.chat.completions.create(
                model="sim-cut", messages=HI, stream=True
            ):
                pass
        ids = [m.id async for m in client.models.list()]
        assert ids[0] == "fast"

        stalled = await client.chat.completions.create(model="sim-stall", messages=HI, stream=True)
        await anext(stalled.__aiter__())
        await stalled.close()
        await until(lambda: backends["sim-stall"].calls_cancelled == 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_run_standalone_serves_the_sdk_from_worker_processes(config_with) -> None:
    async with grpc_router(config_with) as (address, _):
        port = _free_port()
        code = (
            "from router.cli.gateway_workers import run_standalone\n"
            "from gateway.settings import GatewaySettings\n"
            f"run_standalone({address!r}, '127.0.0.1:{port}', 2, GatewaySettings())\n"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                async with asyncio.timeout(30):
                    while True:
                        try:
                            if (await http.get("/readyz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await asyncio.sleep(0.05)
            async with openai.AsyncOpenAI(
                base_url=base + "/v1", api_key="k", max_retries=0
            ) as client:
                for _ in range(4):  # spread over the workers
                    completion = await client.chat.completions.create(model="fast", messages=HI)
                    assert completion.choices[0].message.content
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                exit_code = await proc.wait()
        assert exit_code == 0
