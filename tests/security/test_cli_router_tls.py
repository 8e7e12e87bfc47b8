"""The commands that call a router reach one that serves mutual TLS: `imesh keys` sends the
admin key only inside the TLS session, and a certificate without its CA is refused at the
command line. The router is a real gRPC server on a free port that records the metadata
it was sent."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import NoReturn

import grpc
import pytest

from adapters.config import ServerTLS
from adapters.hop_auth import server_credentials
from imesh.v1 import admin_service_pb2, admin_service_pb2_grpc
from router.cli.main import main
from tests.support.certs import TestPKI

ADMIN_KEY = "admin-key-for-the-tls-test"


class RecordingAdmin(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(self) -> None:
        self.authorizations: list[str] = []

    def ListKeys(
        self, request: admin_service_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> admin_service_pb2.ListKeysResponse:
        metadata = dict(context.invocation_metadata())
        self.authorizations.append(str(metadata.get("authorization")))
        return admin_service_pb2.ListKeysResponse()

    def CreateKey(self, request: object, context: grpc.ServicerContext) -> NoReturn:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")

    RevokeKey = RotateKey = CreateKey


@pytest.fixture
def tls_router(pki: TestPKI) -> Iterator[tuple[str, RecordingAdmin]]:
    """("localhost:PORT", the servicer) of an AdminService that requires mutual TLS."""
    admin = RecordingAdmin()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    tls = ServerTLS(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    server.start()
    try:
        yield f"localhost:{port}", admin
    finally:
        server.stop(None)


def test_keys_reaches_a_mutual_tls_router_with_the_admin_key(
    tls_router: tuple[str, RecordingAdmin], pki: TestPKI, capsys: pytest.CaptureFixture[str]
) -> None:
    address, admin = tls_router
    argv = ["keys", "--router", address, "--admin-key", ADMIN_KEY, "--tls-ca", str(pki.ca)]
    argv += ["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key), "list"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == "no keys"
    assert admin.authorizations == [f"Bearer {ADMIN_KEY}"]


def test_a_plaintext_keys_call_never_reaches_a_tls_router(
    tls_router: tuple[str, RecordingAdmin],
) -> None:
    address, admin = tls_router
    with pytest.raises(SystemExit) as exited:
        main(["keys", "--router", address, "--admin-key", ADMIN_KEY, "list"])
    assert exited.value.code == 1
    assert admin.authorizations == []


def test_a_client_certificate_without_the_routers_ca_is_refused(
    pki: TestPKI, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["keys", "--admin-key", ADMIN_KEY, "--tls-cert", str(pki.client.cert), "list"])
    assert exited.value.code == 2
    assert "--tls-ca" in capsys.readouterr().err
