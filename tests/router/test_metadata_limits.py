"""gRPC servers bound request metadata (grpc.max_metadata_size): the router, the adapter
service and the pool service refuse an oversized header block with RESOURCE_EXHAUSTED and
serve normal ones."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.config import SimulatedConfig
from adapters.grpc_options import MAX_METADATA_BYTES
from adapters.hop_auth import ServerSecurity
from adapters.pool_config import PoolServiceConfig
from adapters.service import start_adapter_server
from adapters.simulated import SimulatedBackend
from router.server import start_router_server
from tests.reliability.mesh_fakes import Script, make_mesh
from vllm_pool.server import start_pool_server

# The client may send far more than any server accepts.
CLIENT_OPTIONS = [("grpc.max_metadata_size", 4 * 1024 * 1024)]


async def router_port() -> AsyncIterator[int]:
    mesh = make_mesh({"dep-a": [Script(tokens=["a"])]})
    server = await start_router_server(mesh.router, "127.0.0.1:0")
    try:
        yield server.port
    finally:
        await server.stop(0)


async def adapter_port() -> AsyncIterator[int]:
    backend = SimulatedBackend(SimulatedConfig(kind="simulated"))
    server = await start_adapter_server(backend, "127.0.0.1:0", ServerSecurity.tls_only(None))
    try:
        yield server.port
    finally:
        await server.stop(0)


async def pool_port() -> AsyncIterator[int]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("METADATA_TEST_AGENT", "a" * 16)
        env.setenv("METADATA_TEST_READER", "r" * 16)
        config = PoolServiceConfig(
            listen="127.0.0.1:0",
            agent_tokens=["env:METADATA_TEST_AGENT"],
            reader_tokens=["env:METADATA_TEST_READER"],
        )
        server = await start_pool_server(config)
    try:
        yield server.port
    finally:
        await server.stop(0)


SERVERS = {"router": router_port, "adapter": adapter_port, "pool": pool_port}


@pytest.fixture(params=sorted(SERVERS))
async def port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    async for bound in SERVERS[request.param]():
        yield bound


async def health_with(port: int, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), metadata=metadata, timeout=5
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK


def test_the_bound_is_8_kib() -> None:
    assert MAX_METADATA_BYTES == 8 * 1024


async def test_a_normal_header_block_is_served(port: int) -> None:
    metadata = (("authorization", "Bearer " + "k" * 200), ("x-request-id", "r" * 64))
    assert await health_with(port, metadata) is grpc.StatusCode.OK


@pytest.mark.parametrize(
    "metadata",
    [
        (("x-big", "a" * 12 * 1024),),  # past the bound, within gRPC's default hard limit
        (("x-big", "a" * 1024 * 1024),),
        tuple((f"x-h{i}", "v") for i in range(2000)),
    ],
    ids=["12KiB", "1MiB", "2000-headers"],
)
async def test_an_oversized_header_block_is_refused(
    port: int, metadata: tuple[tuple[str, str], ...]
) -> None:
    assert await health_with(port, metadata) is grpc.StatusCode.RESOURCE_EXHAUSTED
