"""The pool service over mutual TLS: the CLI's channel (`--ca/--cert/--key`) and a router's
`vllm_pool` provider (`tls`) reach it; a plaintext client never does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from adapters.config import ClientTLS
from adapters.pool_config import PoolServiceConfig, VllmPoolConfig
from imesh.v1 import pool_service_pb2 as pb
from imesh.v1 import pool_service_pb2_grpc
from router.cli.main import build_parser
from router.cli.pool import pool_channel
from tests.support.certs import TestPKI
from vllm_pool.backend import PoolBackend
from vllm_pool.server import PoolServer, start_pool_server

AGENT, READER = "agent-token-for-tls-tests", "reader-token-for-tls-tests"


@pytest.fixture
async def tls_pool(pki: TestPKI, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PoolServer]:
    monkeypatch.setenv("POOL_TLS_AGENT", AGENT)
    monkeypatch.setenv("POOL_TLS_READER", READER)
    config = PoolServiceConfig.model_validate(
        {
            "listen": "127.0.0.1:0",
            "agent_tokens": ["env:POOL_TLS_AGENT"],
            "reader_tokens": ["env:POOL_TLS_READER"],
            "tls": {"cert": pki.server.cert, "key": pki.server.key, "client_ca": pki.ca},
        }
    )
    server = await start_pool_server(config)
    yield server
    await server.stop(0)


async def test_the_cli_channel_registers_and_lists_over_mutual_tls(
    tls_pool: PoolServer, pki: TestPKI
) -> None:
    args = build_parser().parse_args(
        [
            *("pool", "list", "--pool", f"localhost:{tls_pool.port}"),
            *("--ca", str(pki.ca), "--cert", str(pki.client.cert), "--key", str(pki.client.key)),
        ]
    )
    async with pool_channel(args) as channel:
        stub = pool_service_pb2_grpc.PoolServiceStub(channel)
        spec = pb.ReplicaSpec(
            pool="gpu",
            replica_id="r1",
            transport=pb.REPLICA_TRANSPORT_HTTP,
            address="http://r1:8000",
            models=["tiny"],
        )
        await stub.Register(
            pb.RegisterRequest(spec=spec), metadata=(("authorization", f"Bearer {AGENT}"),)
        )
        listed = await stub.ListReplicas(
            pb.ListReplicasRequest(pool="gpu"), metadata=(("authorization", f"Bearer {READER}"),)
        )

    assert [r.spec.replica_id for r in listed.replicas] == ["r1"]


async def test_a_plaintext_client_never_reaches_a_tls_pool_service(tls_pool: PoolServer) -> None:
    async with grpc.aio.insecure_channel(f"localhost:{tls_pool.port}") as channel:
        stub = pool_service_pb2_grpc.PoolServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListReplicas(
                pb.ListReplicasRequest(pool="gpu"),
                metadata=(("authorization", f"Bearer {READER}"),),
                timeout=5,
            )

    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_routers_pool_provider_watches_over_mutual_tls(
    tls_pool: PoolServer, pki: TestPKI
) -> None:
    config = VllmPoolConfig(
        kind="vllm_pool",
        pool="gpu",
        address=f"localhost:{tls_pool.port}",
        token="env:POOL_TLS_READER",
        tls=ClientTLS(ca=pki.ca, cert=pki.client.cert, key=pki.client.key),
    )
    backend = PoolBackend(config)
    try:
        backend.view.start()
        async with asyncio.timeout(10):
            await backend.view.synced.wait()
    finally:
        await backend.aclose()
