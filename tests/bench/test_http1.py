"""The load generator's HTTP/1.1 client against real sockets: Content-Length, chunked and
read-to-close bodies, bodies fed as they arrive, keep-alive reuse, error statuses, a server
that closes the connection (between responses and in the middle of one), cancellation and
timeouts, each leaving the client able to make its next request."""

from __future__ import annotations

import asyncio

import pytest

from bench.http1 import ProtocolError, request_bytes
from tests.bench.raw_http import CHUNKED_HEAD, chunk, content_length, read_request, serving

RAW = request_bytes("127.0.0.1", 1, "/v1/chat/completions", b"{}", {"x-test": "1"})


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection with its own request's size."""
    while True:
        request = await read_request(reader)
        writer.write(content_length(b"%d" % len(request), extra=b"X-Imesh-Edge: 1\r\n"))
        await writer.drain()


async def test_content_length_responses_reuse_one_connection() -> None:
    async with serving(keep_answering) as (client, accepted):
        responses = [await client.exchange(RAW) for _ in range(3)]
    assert [(r.status, r.body) for r in responses] == [(200, b"%d" % len(RAW))] * 3
    assert responses[0].headers[b"x-imesh-edge"] == b"1"  # names lowercased
    assert (client.connects, len(accepted)) == (1, 1)


async def test_a_chunked_body_split_across_reads_arrives_whole() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        wire = CHUNKED_HEAD + chunk(b"hello ") + chunk(b"world") + b"0\r\n\r\n"
        for i in range(0, len(wire), 7):  # cuts through sizes, data and CRLFs
            writer.write(wire[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0.001)
        await read_request(reader)

    async with serving(handler) as (client, _):
        response = await client.exchange(RAW)
    assert (response.status, response.body) == (200, b"hello world")
    assert response.headers[b"x-edge"] == b"0.5"


async def test_a_fed_body_goes_to_the_feed_once_per_read_and_not_into_the_response() -> None:
    first_read = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n"))
        await writer.drain()
        await first_read.wait()
        writer.write(chunk(b"data: 3\n\n") + b"0\r\n\r\n")
        await writer.drain()
        await read_request(reader)

    fed: list[bytes] = []

    def feed(data: bytes) -> None:
        fed.append(data)
        first_read.set()

    async with serving(handler) as (client, _):
        response = await client.exchange(RAW, feed)
    assert fed == [b"data: 1\n\ndata: 2\n\n", b"data: 3\n\n"]
    assert response.body == b""


async def test_an_error_status_keeps_its_body_even_with_a_feed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(content_length(b'{"error": "nope"}', b"429 Too Many Requests"))
        await keep_answering(reader, writer)

    fed: list[bytes] = []
    async with serving(handler) as (client, _):
        response = await client.exchange(RAW, fed.append)
        again = await client.exchange(RAW)
    assert (response.status, response.body, fed) == (429, b'{"error": "nope"}', [])
    assert again.status == 200
    assert client.connects == 1


async def test_a_body_without_length_ends_with_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")

    async with serving(handler) as (client, _):
        response = await client.exchange(RAW)
        assert response.body == b"part one, part two"
        again = await client.exchange(RAW)  # a new connection, answered the same way
    assert again.body == b"part one, part two"
    assert client.connects == 2


async def test_connection_close_and_an_idle_close_are_followed_by_a_new_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(content_length(b"bye", extra=b"connection: close\r\n"))
        await writer.drain()

    async with serving(handler) as (client, accepted):
        for _ in range(3):
            assert (await client.exchange(RAW)).body == b"bye"
            await asyncio.sleep(0.01)
    assert (client.connects, len(accepted)) == (3, 3)


async def test_a_server_closing_mid_response_fails_that_request_only() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(accepted) == 1:
            await read_request(reader)
            writer.write(CHUNKED_HEAD + chunk(b"half"))  # then closes
            return
        await keep_answering(reader, writer)

    async with serving(handler) as (client, accepted):
        with pytest.raises(ConnectionError, match="mid-response"):
            await client.exchange(RAW)
        assert (await client.exchange(RAW)).status == 200
    assert client.connects == 2


async def test_a_cancelled_exchange_drops_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(accepted) == 1:
            await read_request(reader)
            writer.write(CHUNKED_HEAD + chunk(b"stalled"))
            await asyncio.sleep(10)
        await keep_answering(reader, writer)

    async with serving(handler) as (client, accepted):
        task = asyncio.create_task(client.exchange(RAW))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await client.exchange(RAW)).status == 200
    assert client.connects == 2


async def test_a_silent_server_times_the_exchange_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async with serving(handler, timeout_s=0.05) as (client, _):
        with pytest.raises(TimeoutError, match=r"within 0\.05 s"):
            await client.exchange(RAW)


async def test_what_a_feed_raises_fails_the_exchange_and_the_next_one_reconnects() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(b"data: x\n\n") + b"0\r\n\r\n")
        await keep_answering(reader, writer)

    def refuse(data: bytes) -> None:
        raise ValueError(f"refused {data!r}")

    async with serving(handler) as (client, _):
        with pytest.raises(ValueError, match="refused"):
            await client.exchange(RAW, refuse)
        assert (await client.exchange(RAW)).status == 200
    assert client.connects == 2


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not a valid HTTP/1.1 response"),
        (content_length(b"x", extra=b"content-encoding: gzip\r\n"), "compressed"),
        (content_length(b"x") + content_length(b"y"), "after the response"),
    ],
    ids=["not-http", "compressed", "extra-response"],
)
async def test_a_response_this_client_cannot_trust_is_an_error(wire: bytes, error: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(wire)
        await writer.drain()
        await asyncio.sleep(1)

    async with serving(handler) as (client, _):
        with pytest.raises(ProtocolError, match=error):
            await client.exchange(RAW)


def test_a_request_is_encoded_once_with_its_length() -> None:
    raw = request_bytes("h", 8, "/v1/x", b'{"a":1}', {"authorization": "Bearer b"})
    assert raw == (
        b"POST /v1/x HTTP/1.1\r\nhost: h:8\r\ncontent-length: 7\r\n"
        b'authorization: Bearer b\r\n\r\n{"a":1}'
    )
