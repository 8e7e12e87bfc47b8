"""The load generator: a fixed number of chat calls at a fixed concurrency, timed one by one.

A Target makes one call (streaming or not, with an optional max_tokens) and returns a Sample:
latency, time to first token, the tokens the answer reports, how much text it carried and,
from the mesh's REST edge, its overhead header. Targets: `HttpTarget` (any OpenAI-compatible
URL, over bench/http1.py's minimal keep-alive client) and `GrpcTarget` (an
`imesh.v1.ChatService`, over imesh.Client).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import orjson

from bench.http1 import Http1Client, request_bytes
from imesh.client import Client, user
from imesh.v1 import chat_pb2

PROMPT = "Say hello to the benchmark."
EDGE_OVERHEAD_HEADER = b"x-imesh-edge-overhead-ms"
REQUEST_HEADERS = {
    "authorization": "Bearer bench",
    "content-type": "application/json",
    "user-agent": "imesh-bench",
}
TIMEOUT_S = 60.0
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
    """POST {base_url}/chat/completions over HTTP/1.1 keep-alive, one connection per
    concurrent call, on bench/http1.py's client: each call shape's request is encoded once,
    and a stream's events are read as each socket read delivers them. httpx cost the load
    generator about 1 ms of CPU per request here, enough for its core, not the server
    measured, to set the pace at concurrency 32."""

    def __init__(self, base_url: str, model: str, *, connections: int) -> None:
        url = urlsplit(base_url.rstrip("/"))
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"HttpTarget speaks plain http://HOST[:PORT]/PATH, got {base_url!r}")
        self._host, self._port = url.hostname, url.port or 80
        self._path = url.path + "/chat/completions"
        self._idle = collections.deque(
            Http1Client(self._host, self._port, timeout_s=TIMEOUT_S) for _ in range(connections)
        )
        self._model = model
        self._requests: dict[Call, bytes] = {}

    def body(self, call: Call) -> bytes:
        """The JSON request body for `call`."""
        request: dict[str, object] = {
            "model": self._model,
            "messages": [{"role": "user", "content": PROMPT}],
        }
        if call.max_tokens is not None:
            request["max_tokens"] = call.max_tokens
        if call.stream:
            request["stream"] = True
            request["stream_options"] = {"include_usage": True}
        return orjson.dumps(request)

    def request(self, call: Call) -> bytes:
        """The whole HTTP request for `call` (head and body), encoded once."""
        raw = self._requests.get(call)
        if raw is None:
            raw = self._requests[call] = request_bytes(
                self._host, self._port, self._path, self.body(call), REQUEST_HEADERS
            )
        return raw

    async def call(self, call: Call) -> Sample:
        http = self._idle.pop()  # callers never outnumber `connections`
        try:
            raw = self.request(call)
            return await (self._stream(http, raw) if call.stream else self._once(http, raw))
        finally:
            self._idle.append(http)

    async def _once(self, http: Http1Client, raw: bytes) -> Sample:
        t0 = time.perf_counter()
        response = await http.exchange(raw)
        latency = time.perf_counter() - t0
        _check(response.status, response.body)
        answer = orjson.loads(response.body)
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

    async def _stream(self, http: Http1Client, raw: bytes) -> Sample:
        reader = SseReader(time.perf_counter())
        response = await http.exchange(raw, reader.feed)
        latency = time.perf_counter() - reader.t0
        _check(response.status, response.body)
        reader.end()
        if reader.ttft is None or reader.usage is None:
            raise ValueError("stream ended without content, usage or [DONE]")
        usage = reader.usage
        return Sample(
            latency,
            reader.ttft,
            usage["prompt_tokens"],
            usage["completion_tokens"],
            reader.chars,
            _overhead(response.headers),
        )

    @property
    def connects(self) -> int:
        """Connections opened so far (one per concurrent call, if keep-alive held)."""
        return sum(http.connects for http in self._idle)

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()


class SseReader:
    """The `data:` lines of an OpenAI chat stream, read as the bytes arrive: the time to
    the first content text, the characters of text, the usage, whether [DONE] came. An
    error frame fails the call at once."""

    __slots__ = ("_rest", "chars", "done", "t0", "ttft", "usage")

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.ttft: float | None = None
        self.usage: dict[str, int] | None = None
        self.chars = 0
        self.done = False
        self._rest = b""

    def feed(self, data: bytes) -> None:
        lines = (self._rest + data).split(b"\n") if self._rest else data.split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].rstrip(b"\r")
            if payload == b"[DONE]":
                self.done = True
                continue
            chunk = orjson.loads(payload)
            if "error" in chunk:
                raise ValueError(f"error frame: {payload[:200]!r}")
            choices = chunk.get("choices")
            if choices and (text := choices[0]["delta"].get("content")):
                self.chars += len(text)
                if self.ttft is None:
                    self.ttft = time.perf_counter() - self.t0
            if chunk.get("usage"):
                self.usage = chunk["usage"]

    def end(self) -> None:
        """The body ended: a last line without its newline still counts."""
        if self._rest:
            rest, self._rest = self._rest, b""
            self.feed(rest + b"\n")
        if not self.done:
            raise ValueError("stream ended without content, usage or [DONE]")


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


def _overhead(headers: dict[bytes, bytes]) -> float | None:
    value = headers.get(EDGE_OVERHEAD_HEADER)
    return float(value) if value is not None else None
