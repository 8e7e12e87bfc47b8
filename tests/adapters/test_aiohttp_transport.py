"""PreparedAiohttpTransport keeps what a provider's calls share, and answers as
httpx-aiohttp's own transport does: the same requests on the wire, the same errors, the
same release of the connection."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from adapters.aiohttp_transport import PreparedAiohttpTransport
from adapters.http_client import _tls_context
from tests.adapters.fakes.server import FakeProvider, Reply

_TIMEOUT = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


@pytest.fixture
async def transport() -> AsyncIterator[PreparedAiohttpTransport]:
    prepared = PreparedAiohttpTransport(
        verify=_tls_context(), limits=httpx.Limits(max_connections=4), proxy=None
    )
    yield prepared
    await prepared.aclose()


def _post(url: httpx.URL | str, body: bytes = b"{}", **timeout: float) -> httpx.Request:
    request = httpx.Request(
        "POST", url, content=body, extensions={"timeout": {**_TIMEOUT, **timeout}}
    )
    return request


async def _send(transport: httpx.AsyncBaseTransport, request: httpx.Request) -> bytes:
    response = await transport.handle_async_request(request)
    try:
        return await response.aread()
    finally:
        await response.aclose()


async def test_a_kept_url_is_the_calls_own_and_the_cache_stays_bounded(
    fake: FakeProvider, transport: PreparedAiohttpTransport
) -> None:
    kept = httpx.URL(f"{fake.base_url}/v1/kept")
    calls: list[httpx.URL | str] = [
        kept,
        kept,
        *(f"{fake.base_url}/v1/new/{i}" for i in range(80)),
        kept,
    ]
    fake.enqueue(*(Reply(body=b"{}") for _ in calls))
    for url in calls:
        assert await _send(transport, _post(url)) == b"{}"
    assert [r.path for r in fake.requests] == [httpx.URL(u).path for u in calls]
    assert len(transport._urls) <= 64


async def test_the_request_goes_out_as_given_and_the_answer_comes_back_whole(
    fake: FakeProvider, transport: PreparedAiohttpTransport
) -> None:
    fake.enqueue(Reply(status=201, headers=(("x-answer", "yes"),), body=b'{"a":1}'))
    request = _post(f"{fake.base_url}/v1/chat", b'{"q":2}')
    request.headers["authorization"] = "Bearer k"
    response = await transport.handle_async_request(request)
    body = await response.aread()
    await response.aclose()
    assert (response.status_code, body, response.headers["x-answer"]) == (201, b'{"a":1}', "yes")
    assert response.extensions["http_version"] == b"HTTP/1.1"
    assert response.extensions["reason_phrase"] == b"Fake"
    sent = fake.requests[0]
    assert (sent.method, sent.body, sent.headers["authorization"]) == (
        "POST",
        b'{"q":2}',
        "Bearer k",
    )
    assert sent.headers["content-length"] == "7"


async def test_calls_with_the_same_timeouts_share_one_client_timeout(
    fake: FakeProvider, transport: PreparedAiohttpTransport
) -> None:
    fake.enqueue(*(Reply(body=b"{}") for _ in range(3)))
    await _send(transport, _post(f"{fake.base_url}/v1/a"))
    await _send(transport, _post(f"{fake.base_url}/v1/a"))
    await _send(transport, _post(f"{fake.base_url}/v1/a", read=30.0))
    timeouts = transport._timeouts
    assert {key[1] for key in timeouts} == {5.0, 30.0}
    assert timeouts[(5.0, 30.0, 5.0)].sock_read == 30.0
    assert timeouts[(5.0, 30.0, 5.0)].connect == 5.0


async def test_a_streamed_request_body_takes_httpx_aiohttps_own_path(
    fake: FakeProvider, transport: PreparedAiohttpTransport
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"streamed":'
        yield b"true}"

    fake.enqueue(Reply(body=b"{}"))
    request = httpx.Request(
        "POST",
        f"{fake.base_url}/v1/chat",
        content=body(),
        headers={"content-length": "17"},
        extensions={"timeout": _TIMEOUT},
    )
    assert await _send(transport, request) == b"{}"
    assert fake.requests[0].body == b'{"streamed":true}'


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_raises_the_error_httpx_aiohttp_raises(
    transport: PreparedAiohttpTransport,
) -> None:
    url = f"http://127.0.0.1:{_refused_port()}/v1/chat"
    theirs = AiohttpTransport(verify=_tls_context(), limits=httpx.Limits(max_connections=1))
    try:
        with pytest.raises(httpx.HTTPError) as expected:
            await _send(theirs, _post(url))
    finally:
        await theirs.aclose()
    with pytest.raises(httpx.HTTPError) as raised:
        await _send(transport, _post(url))
    assert type(raised.value) is type(expected.value)
    assert type(raised.value.__cause__) is type(expected.value.__cause__)


async def test_a_body_cut_mid_read_raises_httpx_read_error_and_frees_the_connection(
    fake: FakeProvider, transport: PreparedAiohttpTransport
) -> None:
    fake.enqueue(
        Reply(body=b"data: 1\n\ndata: 2\n\n", streamed=True, cut_after_events=1),
        Reply(body=b"{}"),
    )
    response = await transport.handle_async_request(_post(f"{fake.base_url}/v1/chat"))
    with pytest.raises(httpx.ReadError):
        async for _ in response.aiter_bytes():
            pass
    await response.aclose()
    assert await _send(transport, _post(f"{fake.base_url}/v1/chat")) == b"{}"
    assert transport.client is not None
    assert len(transport.client.connector._acquired) == 0  # type: ignore[union-attr]
