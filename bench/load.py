"""The load generator: a fixed number of chat calls at a fixed concurrency, timed one by one.

A Target makes one call (streaming or not, with an optional max_tokens) and returns a Sample:
latency, time to first token, the tokens the answer reports, how much text it carried and,
from the mesh's REST edge, its overhead header. Targets: `HttpTarget` (any OpenAI-compatible
URL, over httpx) and `GrpcTarget` (an `imesh.v1.ChatService`, over imesh.Client).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import orjson

from imesh.client import Client, user
from imesh.v1 import chat_pb2

PROMPT = "Say hello to the benchmark."
EDGE_OVERHEAD_HEADER = "x-imesh-edge-overhead-ms"
# Errors kept per run, for the report; the rest are only counted.
KEPT_ERRORS = 3


@dataclass(frozen=True, slots=True)
class Call:
    """What one request asks for: streamed or not, and at most how many tokens."""

    stream: bool
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    # Characters of answer text received: checks that every token was relayed.
    text_chars: int = 0
    edge_overhead_ms: float | None = None


class Target(Protocol):
    """One path to a chat server. Lifecycle: build, `call` from many tasks, `aclose()`."""

    async def call(self, call: Call) -> Sample: ...

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

    def fail(self, message: str) -> None:
        self.errors += 1
        if len(self.first_errors) < KEPT_ERRORS:
            self.first_errors.append(message[:300])


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
                result.fail(f"{type(exc).__name__}: {exc}")

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
                timeout=httpx.Timeout(60.0),
            )
            for _ in range(connections)
        )
        self._model = model
        self._bodies: dict[Call, bytes] = {}

    def body(self, call: Call) -> bytes:
        """The request body for `call`, encoded once."""
        body = self._bodies.get(call)
        if body is None:
            request: dict[str, object] = {
                "model": self._model,
                "messages": [{"role": "user", "content": PROMPT}],
            }
            if call.max_tokens is not None:
                request["max_tokens"] = call.max_tokens
            if call.stream:
                request["stream"] = True
                request["stream_options"] = {"include_usage": True}
            body = self._bodies[call] = orjson.dumps(request)
        return body

    async def call(self, call: Call) -> Sample:
        http = self._idle.pop()  # callers never outnumber `connections`
        try:
            body = self.body(call)
            return await (self._stream(http, body) if call.stream else self._once(http, body))
        finally:
            self._idle.append(http)

    async def _once(self, http: httpx.AsyncClient, body: bytes) -> Sample:
        t0 = time.perf_counter()
        response = await http.post("/chat/completions", content=body)
        latency = time.perf_counter() - t0
        _check(response.status_code, response.content)
        answer = orjson.loads(response.content)
        text = answer["choices"][0]["message"]["content"]
        if not text:
            raise ValueError("empty answer")
        usage = answer["usage"]
        return Sample(
            latency,
            None,
            usage["prompt_tokens"],
            usage["completion_tokens"],
            len(text),
            _overhead(response.headers),
        )

    async def _stream(self, http: httpx.AsyncClient, body: bytes) -> Sample:
        t0 = time.perf_counter()
        ttft: float | None = None
        usage: dict[str, int] | None = None
        chars = 0
        done = False
        async with http.stream("POST", "/chat/completions", content=body) as resp:
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
                chunk = orjson.loads(data)
                if "error" in chunk:
                    raise ValueError(f"error frame: {data[:200]}")
                choices = chunk.get("choices")
                if choices and (text := choices[0]["delta"].get("content")):
                    chars += len(text)
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    usage = chunk["usage"]
        latency = time.perf_counter() - t0
        if not done or ttft is None or usage is None:
            raise ValueError("stream ended without content, usage or [DONE]")
        return Sample(
            latency, ttft, usage["prompt_tokens"], usage["completion_tokens"], chars, overhead
        )

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().aclose()


class GrpcTarget:
    """`imesh.v1.ChatService` (Chat and ChatStream) over one imesh.Client channel."""

    def __init__(self, address: str, model: str) -> None:
        self._client = Client(address, api_key="bench", timeout=60.0)
        self._model = model

    def _request(self, call: Call) -> chat_pb2.ChatInput:
        request = chat_pb2.ChatInput(model=self._model, messages=[user(PROMPT)])
        if call.max_tokens is not None:
            request.max_tokens = call.max_tokens
        return request

    async def call(self, call: Call) -> Sample:
        request = self._request(call)
        t0 = time.perf_counter()
        if not call.stream:
            answer = await self._client.chat(request)
            latency = time.perf_counter() - t0
            text = "".join(part.text for part in answer.message.content)
            if not text:
                raise ValueError("empty answer")
            usage = answer.usage
            return Sample(latency, None, usage.prompt_tokens, usage.completion_tokens, len(text))
        ttft: float | None = None
        prompt = completion = -1
        chars = 0
        async for event in self._client.chat_stream(request):
            if event.HasField("content") and event.content.text:
                chars += len(event.content.text)
                if ttft is None:
                    ttft = time.perf_counter() - t0
            elif event.HasField("usage"):
                prompt, completion = event.usage.prompt_tokens, event.usage.completion_tokens
        latency = time.perf_counter() - t0
        if ttft is None or completion < 0:
            raise ValueError("stream ended without content or usage")
        return Sample(latency, ttft, prompt, completion, chars)

    async def aclose(self) -> None:
        await self._client.aclose()


def _check(status: int, body: bytes) -> None:
    if status != 200:
        raise ValueError(f"HTTP {status}: {body[:200]!r}")


def _overhead(headers: httpx.Headers) -> float | None:
    value = headers.get(EDGE_OVERHEAD_HEADER)
    return float(value) if value is not None else None
