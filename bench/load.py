"""The load generator: a fixed number of chat calls at a fixed concurrency, timed one by one.

A Target makes one call (streaming or not) and returns a Sample: latency, time to first
token, the tokens the answer reports and, from the mesh's REST edge, its overhead header.
Targets: `HttpTarget` (any OpenAI-compatible URL, over httpx) and `GrpcTarget` (the
router's ChatService, over imesh.Client).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

PROMPT = "Say hello to the benchmark."
EDGE_OVERHEAD_HEADER = "x-imesh-edge-overhead-ms"
# Errors kept per run, for the report; the rest are only counted.
KEPT_ERRORS = 3


@dataclass(frozen=True, slots=True)
class Sample:
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    edge_overhead_ms: float | None = None


class Target(Protocol):
    """One path to a chat server. Lifecycle: build, `call` from many tasks, `aclose()`."""

    async def call(self, stream: bool) -> Sample: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class LoadResult:
    requests: int
    concurrency: int
    wall_s: float
    client_cpu_s: float
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)


async def run_load(
    call: Callable[[], Awaitable[Sample]], requests: int, concurrency: int
) -> LoadResult:
    """`requests` calls, `concurrency` at a time (each worker starts its next call when its
    last one ends); a failed call is counted, never retried."""
    result = LoadResult(requests, concurrency, 0.0, 0.0)
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                result.samples.append(await call())
            except Exception as exc:  # a failed request is data, not the end of the run
                result.errors += 1
                if len(result.first_errors) < KEPT_ERRORS:
                    result.first_errors.append(f"{type(exc).__name__}: {exc}"[:300])

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, requests)))))
    result.wall_s = time.perf_counter() - t0
    result.client_cpu_s = time.process_time() - cpu0
    return result


class HttpTarget:
    """POST {base_url}/chat/completions over HTTP/1.1 keep-alive, one httpx client of one
    connection per concurrent call: httpx's shared pool costs the load generator about twice
    the CPU per request at concurrency 32, which would cap the baseline's throughput."""

    def __init__(self, base_url: str, model: str, *, connections: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._idle = collections.deque(
            httpx.AsyncClient(
                base_url=base_url.rstrip("/"),
                headers={"authorization": "Bearer bench", "content-type": "application/json"},
                limits=limits,
                timeout=httpx.Timeout(30.0),
            )
            for _ in range(connections)
        )
        messages = [{"role": "user", "content": PROMPT}]
        self._plain = json.dumps({"model": model, "messages": messages}).encode()
        self._streamed = json.dumps(
            {
                "model": model,
                "messages": messages,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()

    async def call(self, stream: bool) -> Sample:
        http = self._idle.pop()  # callers never outnumber `connections`
        try:
            return await (self._stream(http) if stream else self._once(http))
        finally:
            self._idle.append(http)

    async def _once(self, http: httpx.AsyncClient) -> Sample:
        t0 = time.perf_counter()
        response = await http.post("/chat/completions", content=self._plain)
        latency = time.perf_counter() - t0
        _check(response.status_code, response.content)
        answer = json.loads(response.content)
        if not answer["choices"][0]["message"]["content"]:
            raise ValueError("empty answer")
        usage = answer["usage"]
        return Sample(
            latency,
            None,
            usage["prompt_tokens"],
            usage["completion_tokens"],
            _overhead(response.headers),
        )

    async def _stream(self, http: httpx.AsyncClient) -> Sample:
        t0 = time.perf_counter()
        ttft: float | None = None
        usage: dict[str, int] | None = None
        done = False
        async with http.stream("POST", "/chat/completions", content=self._streamed) as resp:
            if resp.status_code != 200:
                _check(resp.status_code, await resp.aread())
            overhead = _overhead(resp.headers)
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    # Read on to the end of the body: a response closed early costs its
                    # connection, and the next call would pay for a new one.
                    done = True
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ValueError(f"error frame: {data[:200]}")
                choices = chunk.get("choices")
                if ttft is None and choices and choices[0]["delta"].get("content"):
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    usage = chunk["usage"]
        latency = time.perf_counter() - t0
        if not done or ttft is None or usage is None:
            raise ValueError("stream ended without content, usage or [DONE]")
        return Sample(latency, ttft, usage["prompt_tokens"], usage["completion_tokens"], overhead)

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().aclose()


class GrpcTarget:
    """The router's ChatService (Chat and ChatStream) over one imesh.Client channel."""

    def __init__(self, address: str, model: str) -> None:
        from imesh.client import Client, user
        from imesh.v1 import chat_pb2

        self._client = Client(address, api_key="bench", timeout=30.0)
        self._request = chat_pb2.ChatInput(model=model, messages=[user(PROMPT)])

    async def call(self, stream: bool) -> Sample:
        t0 = time.perf_counter()
        if not stream:
            answer = await self._client.chat(self._request)
            latency = time.perf_counter() - t0
            if not answer.message.content or not answer.message.content[0].text:
                raise ValueError("empty answer")
            usage = answer.usage
            return Sample(latency, None, usage.prompt_tokens, usage.completion_tokens)
        ttft: float | None = None
        prompt = completion = -1
        async for event in self._client.chat_stream(self._request):
            if ttft is None and event.HasField("content") and event.content.text:
                ttft = time.perf_counter() - t0
            elif event.HasField("usage"):
                prompt, completion = event.usage.prompt_tokens, event.usage.completion_tokens
        latency = time.perf_counter() - t0
        if ttft is None or completion < 0:
            raise ValueError("stream ended without content or usage")
        return Sample(latency, ttft, prompt, completion)

    async def aclose(self) -> None:
        await self._client.aclose()


def _check(status: int, body: bytes) -> None:
    if status != 200:
        raise ValueError(f"HTTP {status}: {body[:200]!r}")


def _overhead(headers: httpx.Headers) -> float | None:
    value = headers.get(EDGE_OVERHEAD_HEADER)
    return float(value) if value is not None else None
