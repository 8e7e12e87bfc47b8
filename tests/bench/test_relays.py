"""The floors and transport relays relay every token and the usage, on a tiny run of real
processes on free ports; their SSE handling keeps events split across reads."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest

from bench import grpc_relay, minimal_relay
from bench.grpc_relay import read_events
from bench.load import Call, GrpcTarget, HttpTarget, Sample, Target
from bench.minimal_relay import reencode_events
from bench.processes import ServerProcess
from bench.transport_relay import TRANSPORTS, aggregate, chunks_of
from bench.upstream import READY_PREFIX, TOKEN_CHARS

TOKENS = 8
PY = sys.executable


def test_reencode_keeps_an_event_split_across_reads_for_the_next_read() -> None:
    first = b'data: {"a": 1}\n\ndata: {"b"'
    out, rest = reencode_events(first)
    assert (out, rest) == (b'data: {"a":1}\n\n', b'data: {"b"')
    out, rest = reencode_events(rest + b": 2}\n\ndata: [DONE]\n\n")
    assert (out, rest) == (b'data: {"b":2}\n\ndata: [DONE]\n\n', b"")


def test_grpc_hop_turns_chunks_into_content_finish_and_usage_events() -> None:
    chunk = {"choices": [{"delta": {"content": " hi"}, "finish_reason": "stop"}], "usage": None}
    usage = {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}
    buffer = b"data: " + orjson.dumps(chunk) + b"\n\ndata: " + orjson.dumps(usage) + b"\n\ndata: "
    events, rest = read_events(buffer)
    assert [e.WhichOneof("event") for e in events] == ["content", "finish", "usage"]
    assert events[2].usage.completion_tokens == 1
    assert rest == b"data: "


def test_aggregate_builds_one_answer_from_the_chunks_of_a_stream() -> None:
    head = {"id": "c1", "created": 1, "model": "m"}
    stream = (
        b"".join(
            b"data: " + orjson.dumps({**head, "choices": [c], "usage": None}) + b"\n\n"
            for c in (
                {"delta": {"role": "assistant", "content": ""}, "finish_reason": None},
                {"delta": {"content": " hi"}, "finish_reason": None},
                {"delta": {"content": " ho"}, "finish_reason": None},
                {"delta": {}, "finish_reason": "length"},
            )
        )
        + b"data: "
        + orjson.dumps({**head, "choices": [], "usage": {"completion_tokens": 2}})
        + b"\n\ndata: [DONE]\n\n"
    )
    chunks, rest = chunks_of(stream)
    answer = aggregate(chunks)
    assert rest == b""
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == " hi ho"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"completion_tokens": 2}


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    proc = ServerProcess(
        "upstream", [PY, "-m", "bench.upstream", "--tokens", str(TOKENS)], cpu=None
    )
    try:
        line = asyncio.run(proc.wait_line(READY_PREFIX, 30))
        yield line[len(READY_PREFIX) :] + "/v1"
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def _relay(argv: list[str], prefix: str) -> AsyncIterator[str]:
    proc = ServerProcess("relay", argv, cpu=None)
    try:
        yield (await proc.wait_line(prefix, 30))[len(prefix) :]
    finally:
        proc.stop()


async def _assert_relays_everything(target: Target) -> None:
    try:
        for call in (Call(False), Call(False, 3), Call(True), Call(True, 3)):
            sample: Sample = await target.call(call)
            expected = call.max_tokens or TOKENS
            assert (sample.completion_tokens, sample.text_chars) == (
                expected,
                expected * TOKEN_CHARS,
            ), call
            assert (sample.ttft_s is not None) == call.stream
    finally:
        await target.aclose()


@pytest.mark.slow
async def test_minimal_relay_relays_every_token_and_the_usage(upstream_url: str) -> None:
    argv = [PY, "-m", "bench.minimal_relay", "--upstream", upstream_url]
    async with _relay(argv, minimal_relay.READY_PREFIX) as url:
        await _assert_relays_everything(HttpTarget(url + "/v1", "m", connections=1))


@pytest.mark.slow
async def test_bare_grpc_hop_relays_every_token_and_the_usage(upstream_url: str) -> None:
    argv = [PY, "-m", "bench.grpc_relay", "--upstream", upstream_url, "--model", "m"]
    async with _relay(argv, grpc_relay.READY_PREFIX) as address:
        await _assert_relays_everything(GrpcTarget(address, "bench"))


@pytest.mark.slow
@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize("aggregated", [False, True], ids=["unary-upstream", "aggregate"])
async def test_each_transport_relay_relays_every_token_and_the_usage(
    upstream_url: str, transport: str, aggregated: bool
) -> None:
    argv = [PY, "-m", "bench.transport_relay", "--upstream", upstream_url]
    argv += ["--transport", transport] + (["--aggregate"] if aggregated else [])
    async with _relay(argv, minimal_relay.READY_PREFIX) as url:
        await _assert_relays_everything(HttpTarget(url + "/v1", "m", connections=1))
