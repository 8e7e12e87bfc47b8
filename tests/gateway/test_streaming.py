"""SSE frames leave as produced (not buffered), and a caller hanging up cancels the upstream."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

HI = [{"role": "user", "content": "hi"}]


async def test_sse_frames_arrive_one_by_one_at_the_token_rate(edge) -> None:
    # sim-paced makes 6 tokens at 20 tokens/s: one every 50 ms.
    arrivals: list[float] = []
    async with (
        edge.http() as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "sim-paced", "messages": HI, "stream": True},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.perf_counter())
    assert len(arrivals) == 6
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Buffered output would arrive as one burst (span and gaps near 0); paced output spreads
    # 5 gaps of ~50 ms. Bounds are loose so a busy machine that delays a frame still passes.
    assert arrivals[-1] - arrivals[0] >= 0.15
    assert sum(gap >= 0.02 for gap in gaps) >= 3


async def test_first_frame_is_sent_before_the_stream_completes(edge) -> None:
    async with (
        edge.http() as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "sim-stall", "messages": HI, "stream": True},
        ) as response,
    ):
        # sim-stall never finishes: seeing frames at all proves nothing waits for the end.
        lines = response.aiter_lines()
        first = await anext(lines)
    assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"


async def test_sdk_closing_a_stream_cancels_the_upstream_call(edge, until) -> None:
    backend = edge.backends["sim-stall"]
    client = edge.async_openai()
    stream = await client.chat.completions.create(model="sim-stall", messages=HI, stream=True)
    received = 0
    async for _chunk in stream:
        received += 1
        if received == 3:  # role chunk + the 2 tokens before the stall
            break
    await stream.close()
    await until(lambda: backend.calls_cancelled == 1)
    assert backend.calls_started == 1


async def test_raw_disconnect_mid_stream_cancels_within_milliseconds(edge, until) -> None:
    backend = edge.backends["sim-stall"]
    async with (
        edge.http() as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "sim-stall", "messages": HI, "stream": True},
        ) as response,
    ):
        await anext(response.aiter_lines())
        hung_up = time.monotonic()
    await until(lambda: backend.calls_cancelled == 1)
    assert backend.last_cancelled_at is not None
    assert backend.last_cancelled_at - hung_up < 1.0


async def test_disconnect_during_a_non_streaming_call_cancels_it(edge, until) -> None:
    backend = edge.backends["sim-stall"]
    async with edge.http() as http:
        call = asyncio.ensure_future(
            http.post("/v1/chat/completions", json={"model": "sim-stall", "messages": HI})
        )
        await until(lambda: backend.calls_started == 1)
        call.cancel()  # the client gives up: httpx closes the connection
        await asyncio.gather(call, return_exceptions=True)
    await until(lambda: backend.calls_cancelled == 1)


async def test_the_edge_keeps_serving_after_a_caller_hangs_up(edge, until) -> None:
    async with edge.http() as http:
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "sim-stall", "messages": HI, "stream": True},
        ) as response:
            await anext(response.aiter_lines())
        await until(lambda: edge.backends["sim-stall"].calls_cancelled == 1)
        after = await http.post("/v1/chat/completions", json={"model": "fast", "messages": HI})
    assert after.status_code == 200
