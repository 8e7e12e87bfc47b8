"""Fixtures of the hop-security tests: a test PKI on disk and service tokens by reference."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.backend import Backend, Batch
from adapters.config import SecretRef
from adapters.deadline import Deadline
from imesh.v1 import adapter_service_pb2, events_pb2
from tests.support.certs import TestPKI, make_pki

TOKEN = "router-token-0123456789abcdef"
WRONG_TOKEN = "someone-else-0123456789abcdef"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A mesh CA with an adapter (server) and a router (client) certificate, and a
    client certificate from an unrelated CA."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def token_ref(directory: Path, token: str, name: str = "service-token") -> SecretRef:
    """`file:PATH` of a file holding `token`, as a mounted Secret would."""
    path = directory / name
    path.write_text(token + "\n", encoding="utf-8")
    return SecretRef.model_validate(f"file:{path}")


@pytest.fixture
def token(tmp_path: Path) -> SecretRef:
    return token_ref(tmp_path, TOKEN)


@pytest.fixture
def wrong_token(tmp_path: Path) -> SecretRef:
    return token_ref(tmp_path, WRONG_TOKEN, "wrong-token")


class CountingBackend(Backend):
    """Answers "hello world" in two batches; counts the calls that reached it (a refused
    call must never reach the provider, whose key the adapter holds)."""

    def __init__(self) -> None:
        self.calls = 0

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        self.calls += 1
        yield [events_pb2.ChatEvent(content=events_pb2.ContentDelta(text="hello"))]
        yield [
            events_pb2.ChatEvent(content=events_pb2.ContentDelta(text=" world")),
            events_pb2.ChatEvent(usage=events_pb2.Usage(prompt_tokens=3, completion_tokens=2)),
            events_pb2.ChatEvent(finish=events_pb2.Finish(reason=events_pb2.FINISH_REASON_STOP)),
        ]


@pytest.fixture
def backend() -> CountingBackend:
    return CountingBackend()
