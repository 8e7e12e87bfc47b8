"""gRPC servers bound request metadata (grpc.max_metadata_size): the router and the adapter
service refuse an oversized header block with RESOURCE_EXHAUSTED and serve normal ones."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.config import SimulatedConfig
from adapters.hop_auth import ServerSecurity
from adapters.service import MAX_METADATA_BYTES as ADAPTER_MAX
from adapters.service import start_adapter_server
from adapters.simulated import SimulatedBackend
from router.server import MAX_METADATA_BYTES as ROUTER_MAX
from router.server import start_router_server
from tests.reliability.mesh_fakes import Script, make_mesh

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


@pytest.fixture(params=["router", "adapter"])
async def port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    serve = router_port if request.param == "router" else adapter_port
    async for bound in serve():
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


def test_both_servers_name_the_same_bound() -> None:
    assert ROUTER_MAX == ADAPTER_MAX == 8 * 1024


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
