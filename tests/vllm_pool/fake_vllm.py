"""A fake vLLM OpenAI server for agent tests: `/health`, `/v1/models` and a `/metrics`
page in vLLM's exact Prometheus format, served by uvicorn on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


def vllm_metrics(
    *,
    running: int = 0,
    waiting: int = 0,
    kv: float = 0.0,
    queries: float = 0.0,
    hits: float = 0.0,
    model: str = "tiny",
    legacy_kv_name: bool = False,
) -> str:
    """A `/metrics` page as vLLM writes it (older versions named the KV gauge
    `gpu_cache_usage_perc`)."""
    labels = f'engine="0",model_name="{model}"'
    kv_name = "vllm:gpu_cache_usage_perc" if legacy_kv_name else "vllm:kv_cache_usage_perc"
    return f"""\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{{labels}}} {float(running)}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{{labels}}} {float(waiting)}
# HELP {kv_name} KV-cache usage. 1 means 100 percent usage.
# TYPE {kv_name} gauge
{kv_name}{{{labels}}} {kv}
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{{labels}}} {queries}
vllm:prefix_cache_queries_created{{{labels}}} 1.7e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{{labels}}} {hits}
vllm:prefix_cache_hits_created{{{labels}}} 1.7e+09
"""


@dataclass
class FakeVllmState:
    healthy: bool = True
    running: int = 0
    waiting: int = 0
    kv: float = 0.0
    model: str = "tiny"
    max_model_len: int = 512
    metrics_fail: bool = False


class FakeVllm:
    def __init__(self, state: FakeVllmState, url: str) -> None:
        self.state = state
        self.url = url


@contextlib.asynccontextmanager
async def fake_vllm(state: FakeVllmState | None = None) -> AsyncIterator[FakeVllm]:
    state = state or FakeVllmState()

    async def health(_: Request) -> Response:
        return Response(status_code=200 if state.healthy else 503)

    async def models(_: Request) -> Response:
        card = {"id": state.model, "object": "model", "max_model_len": state.max_model_len}
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics(_: Request) -> Response:
        if state.metrics_fail:
            return Response(status_code=500)
        page = vllm_metrics(
            running=state.running, waiting=state.waiting, kv=state.kv, model=state.model
        )
        return PlainTextResponse(page)

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/metrics", metrics),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield FakeVllm(state, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task
        sock.close()
