"""HttpTarget measures what the bench needs from each answer (latency, TTFT, tokens, text,
the edge's overhead header) over keep-alive connections, and fails a call whose answer is
an error, empty or incomplete; SseReader reads events however the reads cut them."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import orjson
import pytest

from bench.load import EDGE_OVERHEAD_HEADER, Call, HttpTarget, SseReader, run_load
from bench.processes import ServerProcess
from bench.upstream import READY_PREFIX, TOKEN_CHARS
from tests.bench.raw_http import chunk, content_length, read_request, serving

TOKENS = 8


def _event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _delta(content: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": content}}], "usage": None}


STREAM = (
    _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    + _event(_delta(" hi"))
    + _event(_delta(" ho"))
    + _event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("cut", [1, 5, 37, len(STREAM)])
def test_sse_reader_reads_events_cut_anywhere(cut: int) -> None:
    reader = SseReader(0.0)
    for i in range(0, len(STREAM), cut):
        reader.feed(STREAM[i : i + cut])
    reader.end()
    assert (reader.chars, reader.done, reader.usage) == (
        6,
        True,
        {"prompt_tokens": 5, "completion_tokens": 2},
    )
    assert reader.ttft is not None


def test_sse_reader_takes_crlf_lines_and_a_last_line_without_newline() -> None:
    reader = SseReader(0.0)
    reader.feed(STREAM.replace(b"\n", b"\r\n")[: -len(b"\r\n\r\n")])
    reader.end()
    assert (reader.chars, reader.done) == (6, True)


def test_sse_reader_times_the_first_text_not_the_role_chunk() -> None:
    reader = SseReader(0.0)
    reader.feed(STREAM.split(b"\n\n", 1)[0] + b"\n\n")
    assert reader.ttft is None
    reader.feed(_event(_delta(" hi")))
    assert reader.ttft is not None


def test_sse_reader_refuses_an_error_frame_and_a_stream_without_done() -> None:
    with pytest.raises(ValueError, match="error frame"):
        SseReader(0.0).feed(_event({"error": {"message": "boom"}}))
    reader = SseReader(0.0)
    reader.feed(STREAM.replace(b"data: [DONE]\n\n", b""))
    with pytest.raises(ValueError, match=r"\[DONE\]"):
        reader.end()


def _answer(text: str) -> bytes:
    return orjson.dumps(
        {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        }
    )


async def test_http_target_reads_an_answer_and_the_edge_overhead_header() -> None:
    answers = [
        content_length(_answer(" hi ho"), extra=EDGE_OVERHEAD_HEADER + b": 0.125\r\n"),
        content_length(_answer("")),
        content_length(b'{"error": {"message": "no such model"}}', b"404 Not Found"),
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(STREAM) + b"0\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy",
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
        await reader.read()

    async with serving(handler) as (client, _):
        target = HttpTarget(f"http://127.0.0.1:{client.port}/v1", "m", connections=1)
        sample = await target.call(Call(False))
        with pytest.raises(ValueError, match="empty answer"):
            await target.call(Call(False))
        with pytest.raises(ValueError, match=r"HTTP 404: b'\{\"error\""):
            await target.call(Call(False))
        streamed = await target.call(Call(True))
        with pytest.raises(ValueError, match="HTTP 503: b'busy'"):
            await target.call(Call(True))
        assert target.connects == 1  # errors answered in full keep the connection
        await target.aclose()
    assert (sample.prompt_tokens, sample.completion_tokens, sample.text_chars) == (5, 2, 6)
    assert (sample.ttft_s, sample.edge_overhead_ms) == (None, 0.125)
    assert (streamed.completion_tokens, streamed.text_chars, streamed.edge_overhead_ms) == (
        2,
        6,
        None,
    )
    assert streamed.ttft_s is not None
    assert streamed.ttft_s <= streamed.latency_s


def test_http_target_encodes_each_call_shape_once() -> None:
    target = HttpTarget("http://127.0.0.1:9/v1", "m", connections=1)
    raw = target.request(Call(True, 3))
    assert target.request(Call(True, 3)) is raw
    assert raw.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:9\r\n")
    body = orjson.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 3
    with pytest.raises(ValueError, match="plain http"):
        HttpTarget("https://example.com/v1", "m", connections=1)


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    proc = ServerProcess(
        "upstream", [sys.executable, "-m", "bench.upstream", "--tokens", str(TOKENS)], cpu=None
    )
    try:
        line = asyncio.run(proc.wait_line(READY_PREFIX, 30))
        yield line[len(READY_PREFIX) :] + "/v1"
    finally:
        proc.stop()


@pytest.mark.slow
@pytest.mark.parametrize("call", [Call(False), Call(False, 3), Call(True), Call(True, 3)])
async def test_http_target_measures_the_upstream_over_one_connection_per_worker(
    upstream_url: str, call: Call
) -> None:
    target = HttpTarget(upstream_url, "m", connections=4)
    try:
        run = await run_load(lambda: target.call(call), 40, 4)
        assert (run.errors, len(run.samples)) == (0, 40), run.first_errors
        assert target.connects == 4
    finally:
        await target.aclose()
    expected = call.max_tokens or TOKENS
    for sample in run.samples:
        assert (sample.completion_tokens, sample.text_chars) == (expected, expected * TOKEN_CHARS)
        assert (sample.ttft_s is not None) == call.stream
