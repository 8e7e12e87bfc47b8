"""The router -> adapter hop: only a router with the service token (and, under mutual TLS,
a certificate the mesh's CA signed) gets a call through to the provider."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from adapters.config import AdapterServiceSettings, ClientTLS, RemoteConfig, SecretRef, ServerTLS
from adapters.deadline import Deadline
from adapters.hop_auth import SERVICE_TOKEN_KEY, ClientSecurity, ServerSecurity
from adapters.remote import RemoteBackend
from adapters.service import AdapterServer, start_adapter_server
from imesh.errors import MeshError, Reason, classify
from imesh.v1 import adapter_service_pb2, adapter_service_pb2_grpc, chat_pb2, events_pb2
from tests.security.conftest import TOKEN, WRONG_TOKEN, CountingBackend
from tests.support.certs import Issued, TestPKI

REQUEST = adapter_service_pb2.GenerateRequest(
    input=chat_pb2.ChatInput(
        model="m",
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="hi")])
        ],
    ),
    provider_model="any-model",
)


def mtls_server(pki: TestPKI) -> ServerTLS:
    return ServerTLS(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca)


def client_tls(ca: Path, client: Issued | None) -> ClientTLS:
    if client is None:
        return ClientTLS(ca=ca)
    return ClientTLS(ca=ca, cert=client.cert, key=client.key)


@asynccontextmanager
async def adapter(
    backend: CountingBackend,
    token: SecretRef,
    tls: ServerTLS | None,
    *,
    health_listen: str | None = None,
) -> AsyncIterator[AdapterServer]:
    security = ServerSecurity.for_adapter(AdapterServiceSettings(tokens=[token], tls=tls))
    server = await start_adapter_server(
        backend, "127.0.0.1:0", security, health_listen=health_listen
    )
    try:
        yield server
    finally:
        await server.stop(0)


async def generate(
    server: AdapterServer, security: ClientSecurity
) -> list[adapter_service_pb2.GenerateResponse]:
    """One raw Generate call, with `security`'s credentials and metadata."""
    async with security.channel(f"localhost:{server.port}") as channel:
        stub = adapter_service_pb2_grpc.AdapterServiceStub(channel)
        call = stub.Generate(REQUEST, timeout=5, metadata=security.metadata)
        return [response async for response in call]


async def collect(remote: RemoteBackend) -> tuple[list[events_pb2.ChatEvent], MeshError | None]:
    events: list[events_pb2.ChatEvent] = []
    try:
        async for batch in remote.chat(REQUEST, Deadline.after(5)):
            events.extend(batch)
    except MeshError as err:
        return events, err
    finally:
        await remote.aclose()
    return events, None


def remote(server: AdapterServer, token: SecretRef, tls: ClientTLS | None) -> RemoteBackend:
    address = f"localhost:{server.port}"
    return RemoteBackend(RemoteConfig(kind="remote", address=address, token=token, tls=tls))


def text(events: list[events_pb2.ChatEvent]) -> str:
    return "".join(e.content.text for e in events if e.HasField("content"))


async def test_router_with_token_and_client_certificate_streams_the_answer(
    pki: TestPKI, backend: CountingBackend, token: SecretRef
) -> None:
    async with adapter(backend, token, mtls_server(pki)) as server:
        events, err = await collect(remote(server, token, client_tls(pki.ca, pki.client)))
    assert err is None
    assert text(events) == "hello world"
    assert backend.calls == 1


async def test_generate_without_metadata_never_reaches_the_provider(
    backend: CountingBackend, token: SecretRef
) -> None:
    # The reported hole: a plaintext Generate with no metadata called the upstream.
    async with adapter(backend, token, None) as server:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(server, ClientSecurity())
    refused = MeshError.from_rpc_error(caught.value)
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.ADAPTER_UNAUTHENTICATED,
    )
    assert refused.message == "this service requires a service token"
    assert backend.calls == 0


async def test_call_with_a_client_certificate_but_no_token_is_refused(
    pki: TestPKI, backend: CountingBackend, token: SecretRef
) -> None:
    async with adapter(backend, token, mtls_server(pki)) as server:
        security = ClientSecurity.from_config(client_tls(pki.ca, pki.client), None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(server, security)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert backend.calls == 0


async def test_wrong_token_is_adapter_unauthenticated_for_the_router_and_logged_without_it(
    pki: TestPKI,
    backend: CountingBackend,
    token: SecretRef,
    wrong_token: SecretRef,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="adapters.hop_auth")
    async with adapter(backend, token, mtls_server(pki)) as server:
        events, err = await collect(remote(server, wrong_token, client_tls(pki.ca, pki.client)))
    assert events == []
    assert err is not None
    assert (err.code, err.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.ADAPTER_UNAUTHENTICATED,
    )
    # A misconfigured hop: try another deployment, never this one again in the request.
    assert classify(err).exclude
    assert backend.calls == 0
    (refusal,) = [r.getMessage() for r in caplog.records if r.name == "adapters.hop_auth"]
    assert refusal.startswith("refused a call from ")
    assert refusal.endswith(": the service token was not accepted")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert WRONG_TOKEN not in logged
    assert TOKEN not in logged


async def test_call_without_a_client_certificate_is_refused_in_the_handshake(
    pki: TestPKI, backend: CountingBackend, token: SecretRef
) -> None:
    async with adapter(backend, token, mtls_server(pki)) as server:
        events, err = await collect(remote(server, token, client_tls(pki.ca, None)))
    assert events == []
    assert err is not None
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, Reason.ADAPTER_UNAVAILABLE)
    assert backend.calls == 0


async def test_client_certificate_from_another_ca_is_refused(
    pki: TestPKI, backend: CountingBackend, token: SecretRef
) -> None:
    async with adapter(backend, token, mtls_server(pki)) as server:
        events, err = await collect(remote(server, token, client_tls(pki.ca, pki.foreign_client)))
    assert events == []
    assert err is not None
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert backend.calls == 0


async def test_router_refuses_an_adapter_its_ca_did_not_sign(
    pki: TestPKI, backend: CountingBackend, token: SecretRef
) -> None:
    async with adapter(backend, token, mtls_server(pki)) as server:
        # The token must not go to a server the router cannot verify.
        events, err = await collect(remote(server, token, client_tls(pki.other_ca, pki.client)))
    assert events == []
    assert err is not None
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert backend.calls == 0


async def test_plaintext_client_gets_nothing_from_a_tls_adapter(
    pki: TestPKI, backend: CountingBackend, token: SecretRef
) -> None:
    async with adapter(backend, token, mtls_server(pki)) as server:
        events, err = await collect(remote(server, token, None))
    assert events == []
    assert err is not None
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert backend.calls == 0


async def test_health_answers_without_a_token_and_reflection_needs_one(
    backend: CountingBackend, token: SecretRef
) -> None:
    async with (
        adapter(backend, token, None) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_health_port_serves_health_alone_in_plaintext_beside_a_tls_port(
    pki: TestPKI, backend: CountingBackend, token: SecretRef
) -> None:
    async with (
        adapter(backend, token, mtls_server(pki), health_listen="127.0.0.1:0") as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="imesh.v1.AdapterService"), timeout=5
        )
        stub = adapter_service_pb2_grpc.AdapterServiceStub(channel)
        call = stub.Generate(REQUEST, timeout=5, metadata=((SERVICE_TOKEN_KEY, TOKEN),))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [r async for r in call]
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert backend.calls == 0
