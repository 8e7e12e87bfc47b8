"""Bounds on a request's head at the edge: oversized or too many headers get 431."""

from __future__ import annotations

import asyncio
import json

from gateway.settings import GatewaySettings
from tests.gateway.conftest import Edge, running_edge


async def exchange(edge: Edge, head: bytes, *, requests: int = 1) -> list[tuple[int, bytes]]:
    """Send `head` (a whole request without a body) `requests` times on one connection;
    (status, body) of each answer. The server may close before it has read everything."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.server.port)
    answers: list[tuple[int, bytes]] = []
    try:
        for _ in range(requests):
            try:
                writer.write(head)
                await writer.drain()
            except ConnectionError:
                pass  # refused mid-send: the answer is already waiting
            status_line = await reader.readline()
            headers: dict[bytes, bytes] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
            answers.append((int(status_line.split()[1]), body))
    finally:
        writer.close()
    return answers


def request(*headers: tuple[str, str]) -> bytes:
    lines = [b"GET /healthz HTTP/1.1", b"host: edge"]
    lines += [f"{name}: {value}".encode() for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def test_a_one_megabyte_header_gets_431_naming_the_limit(edge: Edge) -> None:
    [(status, body)] = await exchange(edge, request(("x-big", "a" * 1024 * 1024)))
    assert status == 431
    error = json.loads(body)["error"]
    assert error["code"] == "request_header_fields_too_large"
    assert "65536 bytes" in error["message"]


async def test_two_thousand_headers_get_431_naming_the_limit(edge: Edge) -> None:
    headers = [(f"x-h{i}", "v") for i in range(2000)]
    [(status, body)] = await exchange(edge, request(*headers))
    assert status == 431
    assert json.loads(body)["error"]["message"] == "more than 100 request headers"


async def test_a_head_just_over_the_configured_bytes_gets_431() -> None:
    settings = GatewaySettings(max_header_bytes=4096, max_headers=20)
    async with running_edge(settings=settings) as edge:
        [(status, _)] = await exchange(edge, request(("x-pad", "p" * 4100)))
        assert status == 431
        [(status, _)] = await exchange(edge, request(*[(f"x-{i}", "v") for i in range(21)]))
        assert status == 431


async def test_heads_within_the_bounds_are_served_and_counted_per_request(edge: Edge) -> None:
    # Each request's head is 40 KiB; two on one connection sum past the 64 KiB bound.
    head = request(*[(f"x-h{i}", "v" * 800) for i in range(50)])
    answers = await exchange(edge, head, requests=2)
    assert [status for status, _ in answers] == [200, 200]
