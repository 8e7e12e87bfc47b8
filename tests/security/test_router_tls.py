"""Caller -> router -> adapter with mutual TLS on both hops: the good path streams; a caller
without a certificate, or with one from another CA, is refused in the handshake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from adapters.config import AdapterServiceSettings, RemoteConfig, SecretRef, ServerTLS
from adapters.hop_auth import ServerSecurity
from adapters.remote import RemoteBackend
from adapters.service import start_adapter_server
from imesh.client import Client, tls_credentials
from imesh.errors import MeshError
from router.config import parse_config
from router.server import RouterServer, start_router_server
from router.service import ChatRouter
from tests.security.conftest import CountingBackend
from tests.support.certs import Issued, TestPKI


@dataclass
class Mesh:
    router: RouterServer
    backend: CountingBackend

    @property
    def address(self) -> str:
        return f"localhost:{self.router.port}"


@pytest.fixture
async def mesh(pki: TestPKI, backend: CountingBackend, token: SecretRef) -> AsyncIterator[Mesh]:
    """An adapter service and a router, each serving mutual TLS with the test CA; the
    router reaches the adapter with its client certificate and the service token."""
    server_tls = ServerTLS(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca)
    adapter = await start_adapter_server(
        backend,
        "127.0.0.1:0",
        ServerSecurity.for_adapter(AdapterServiceSettings(tokens=[token], tls=server_tls)),
    )
    config = parse_config(
        {
            "providers": {
                "hop": {
                    "kind": "remote",
                    "address": f"localhost:{adapter.port}",
                    "token": token.ref,
                    "tls": {
                        "ca": str(pki.ca),
                        "cert": str(pki.client.cert),
                        "key": str(pki.client.key),
                    },
                }
            },
            "deployments": [{"name": "hop-1", "provider": "hop", "model": "m"}],
            "router": {"tls": server_tls.model_dump(mode="json")},
        }
    )
    remote = config.providers["hop"]
    assert isinstance(remote, RemoteConfig)
    chat_router = ChatRouter(config, {"hop": RemoteBackend(remote)})
    router = await start_router_server(chat_router, "127.0.0.1:0", tls=config.router.tls)
    try:
        yield Mesh(router, backend)
    finally:
        await router.stop(0)
        await chat_router.aclose()
        await adapter.stop(0)


def caller(mesh: Mesh, ca: str, client: Issued | None) -> Client:
    if client is None:
        return Client(mesh.address, credentials=tls_credentials(ca), timeout=5)
    credentials = tls_credentials(ca, cert=client.cert, key=client.key)
    return Client(mesh.address, credentials=credentials, timeout=5)


async def test_caller_with_a_certificate_gets_the_answer_through_both_mtls_hops(
    mesh: Mesh, pki: TestPKI
) -> None:
    async with caller(mesh, str(pki.ca), pki.client) as client:
        answer = await client.chat_text("hop-1", "hi")
    assert answer == "hello world"
    assert mesh.backend.calls == 1


async def test_caller_without_a_certificate_is_refused(mesh: Mesh, pki: TestPKI) -> None:
    async with caller(mesh, str(pki.ca), None) as client:
        with pytest.raises(MeshError) as caught:
            await client.chat_text("hop-1", "hi")
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert mesh.backend.calls == 0


async def test_caller_with_a_certificate_from_another_ca_is_refused(
    mesh: Mesh, pki: TestPKI
) -> None:
    async with caller(mesh, str(pki.ca), pki.foreign_client) as client:
        with pytest.raises(MeshError) as caught:
            await client.chat_text("hop-1", "hi")
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert mesh.backend.calls == 0


async def test_plaintext_caller_is_refused(mesh: Mesh) -> None:
    async with Client(mesh.address, timeout=5) as client:
        with pytest.raises(MeshError) as caught:
            await client.chat_text("hop-1", "hi")
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert mesh.backend.calls == 0
