"""PreparedAiohttpTransport keeps what a provider's calls share, and answers as
httpx-aiohttp's own transport does: the same requests on the wire, the same errors, the
same release of the connection."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from adapters.aiohttp_transport import PreparedAiohttpTransport, _ResponseStream
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


async def test_a_new_connection_gets_the_connect_timeout_on_top_of_the_pool_wait(
    fake: FakeProvider, transport: PreparedAiohttpTransport
) -> None:
    """aiohttp's `connect` bounds a pool wait plus a new connection's handshake: bounded
    by httpx's `pool` alone, a handshake slower than the pool wait failed as a timeout."""
    fake.enqueue(Reply(body=b"{}"))
    await _send(transport, _post(f"{fake.base_url}/v1/a"))
    (timeout,) = transport._timeouts.values()
    assert timeout.sock_connect == 5.0  # httpx's connect
    assert timeout.connect == 10.0  # connect + pool


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


def _in_use(transport: PreparedAiohttpTransport) -> int:
    assert transport.client is not None
    return len(transport.client.connector._acquired)  # type: ignore[union-attr]


@pytest.fixture
def no_stream_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx's own read path iterates the byte stream; the direct reads never do."""

    def refuse(self: _ResponseStream) -> AsyncIterator[bytes]:
        raise AssertionError("read through httpx's generators")

    monkeypatch.setattr(_ResponseStream, "__aiter__", refuse)


@pytest.mark.usefixtures("no_stream_iteration")
async def test_a_whole_plain_body_is_one_direct_read_that_closes_and_frees_the_connection(
    fake: FakeProvider, transport: PreparedAiohttpTransport
) -> None:
    fake.enqueue(Reply(body=b'{"whole":true}'), Reply(body=b"{}"))
    response = await transport.handle_async_request(_post(f"{fake.base_url}/v1/chat"))
    assert await response.aread() == b'{"whole":true}'
    assert (response.is_closed, response.is_stream_consumed) == (True, True)
    assert (response.content, response.num_bytes_downloaded) == (b'{"whole":true}', 14)
    assert await response.aread() == b'{"whole":true}'  # kept, as httpx keeps it
    assert _in_use(transport) == 0
    assert await _send(transport, _post(f"{fake.base_url}/v1/chat")) == b"{}"
    assert fake.connections == 1  # the connection went back to the pool


@pytest.mark.usefixtures("no_stream_iteration")
async def test_plain_reads_are_direct_and_the_last_closes_the_response(
    fake: FakeProvider, transport: PreparedAiohttpTransport
) -> None:
    fake.enqueue(Reply(body=b"data: 1\n\ndata: 2\n\n", streamed=True))
    response = await transport.handle_async_request(_post(f"{fake.base_url}/v1/chat"))
    chunks = [chunk async for chunk in response.aiter_bytes()]
    assert b"".join(chunks) == b"data: 1\n\ndata: 2\n\n"
    assert response.is_closed
    assert response.num_bytes_downloaded == 18
    assert _in_use(transport) == 0
    with pytest.raises(httpx.StreamConsumed):
        async for _ in response.aiter_bytes():
            pass


async def test_an_encoded_body_is_decoded_by_httpx(
    fake: FakeProvider, transport: PreparedAiohttpTransport
) -> None:
    packed = gzip.compress(b'{"packed":true}')
    fake.enqueue(*(Reply(headers=(("content-encoding", "gzip"),), body=packed) for _ in "ab"))
    assert await _send(transport, _post(f"{fake.base_url}/v1/chat")) == b'{"packed":true}'
    response = await transport.handle_async_request(_post(f"{fake.base_url}/v1/chat"))
    assert b"".join([c async for c in response.aiter_bytes()]) == b'{"packed":true}'
    assert _in_use(transport) == 0


async def test_a_whole_body_cut_mid_read_raises_httpx_read_error_and_frees_the_connection(
    fake: FakeProvider, transport: PreparedAiohttpTransport
) -> None:
    fake.enqueue(
        Reply(body=b"data: 1\n\ndata: 2\n\n", streamed=True, cut_after_events=1),
        Reply(body=b"{}"),
    )
    request = _post(f"{fake.base_url}/v1/chat")
    response = await transport.handle_async_request(request)
    with pytest.raises(httpx.ReadError) as raised:
        await response.aread()
    assert raised.value.request is request
    await response.aclose()
    assert _in_use(transport) == 0
    assert await _send(transport, _post(f"{fake.base_url}/v1/chat")) == b"{}"


@pytest.mark.parametrize("read", ["whole", "reads"])
async def test_a_read_cancelled_mid_body_strands_no_connection(
    fake: FakeProvider, transport: PreparedAiohttpTransport, read: str
) -> None:
    fake.enqueue(
        Reply(body=b"data: 1\n\ndata: 2\n\n", streamed=True, stall_after_events=1),
        Reply(body=b"{}"),
    )
    response = await transport.handle_async_request(_post(f"{fake.base_url}/v1/chat"))

    async def consume() -> None:
        if read == "whole":
            await response.aread()
        else:
            async for _ in response.aiter_bytes():
                pass

    reading = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await response.aclose()
    assert _in_use(transport) == 0
    await asyncio.wait_for(fake.disconnected.wait(), 5)  # the half-read connection dropped
    assert await _send(transport, _post(f"{fake.base_url}/v1/chat")) == b"{}"


async def test_a_providers_cookie_is_never_sent_back(
    fake: FakeProvider, transport: PreparedAiohttpTransport
) -> None:
    fake.enqueue(Reply(headers=(("set-cookie", "tenant=a; Path=/"),), body=b"{}"), Reply())
    named = f"http://localhost:{fake.port}/v1/chat"  # a jar keeps no cookie of an IP's
    await _send(transport, _post(named))
    await _send(transport, _post(named))
    assert "cookie" not in fake.requests[1].headers
