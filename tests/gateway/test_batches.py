"""The stream unit is a batch: the events that arrived together leave the edge in one write,
and the first batch is never held back behind later ones.

Each ASGI body send becomes one HTTP/1.1 chunk, so reading the chunked framing off a raw
socket shows exactly how the edge wrote the stream.
"""

from __future__ import annotations

import asyncio
import json

from imesh.v1 import events_pb2

HI = [{"role": "user", "content": "hi"}]


def _start() -> events_pb2.ChatEvent:
    return events_pb2.ChatEvent(
        start=events_pb2.StreamStart(request_id="r", model="m", deployment="d")
    )


def _text(text: str) -> events_pb2.ChatEvent:
    return events_pb2.ChatEvent(content=events_pb2.ContentDelta(text=text))


def _end() -> list[events_pb2.ChatEvent]:
    return [
        events_pb2.ChatEvent(usage=events_pb2.Usage(prompt_tokens=1, completion_tokens=9)),
        events_pb2.ChatEvent(finish=events_pb2.Finish(reason=events_pb2.FINISH_REASON_STOP)),
    ]


async def _open_stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"model": "m", "messages": HI, "stream": True}).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding: chunked" in head.lower()
    return reader, writer


async def _next_chunk(reader: asyncio.StreamReader) -> bytes:
    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
    data = await reader.readexactly(size + 2)
    return data[:-2]


async def test_a_burst_of_events_leaves_the_edge_as_one_write(make_edge, fake_api) -> None:
    burst = [_text(f"t{i} ") for i in range(10)]
    api = fake_api(batches=[[_start(), _text("first ")], burst, _end()])
    async with make_edge(api) as edge:
        reader, writer = await _open_stream(edge.server.port)
        try:
            chunks = [await _next_chunk(reader) for _ in range(3)]
        finally:
            writer.close()
    first, second, last = chunks
    assert first.count(b"data: ") == 2  # the role chunk and the first token, together
    assert second.count(b"data: ") == 10  # the whole burst in one write
    assert b'"content":"t0 "' in second
    assert b'"content":"t9 "' in second
    assert last.endswith(b"data: [DONE]\n\n")


async def test_the_first_batch_is_written_before_the_next_exists(make_edge, fake_api) -> None:
    release = asyncio.Event()

    class Gated(fake_api):  # type: ignore[misc]
        async def chat_batches(self, request, ctx):
            yield [_start(), _text("now")]
            await release.wait()
            yield _end()

    async with make_edge(Gated()) as edge:
        reader, writer = await _open_stream(edge.server.port)
        try:
            first = await asyncio.wait_for(_next_chunk(reader), 5)
            assert b'"content":"now"' in first
            release.set()
            rest = await asyncio.wait_for(_next_chunk(reader), 5)
        finally:
            writer.close()
    assert rest.endswith(b"data: [DONE]\n\n")
