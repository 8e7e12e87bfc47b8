"""End to end with two real vLLM engines on CPU (one over its OpenAI HTTP server, one over
its native gRPC engine server), their replica agents, a pool service and the router.

The engines start once per session, in parallel (about a minute and a half on two
cores). Without vLLM the tests skip, unless IMESH_REQUIRE_VLLM=1 (CI), where they fail.
The test that kills an engine runs last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.backend import Batch
from adapters.deadline import Deadline
from adapters.pool_config import VllmPoolConfig
from adapters.registry import build_backends
from imesh.api import CallContext
from imesh.errors import MeshError, Reason
from imesh.v1 import chat_pb2, events_pb2, pool_service_pb2_grpc
from imesh.v1 import pool_service_pb2 as pb
from router.config import parse_config
from router.service import ChatRouter
from tests.vllm_pool.conftest import AUTH, TOKEN, service_config, until
from tests.vllm_pool.tiny_model import write_tiny_model
from tests.vllm_pool.vllm_engines import (
    MODEL_NAME,
    EngineFailed,
    VllmEngine,
    start_engine,
    wait_ready,
)
from tests.vllm_pool.vllm_env import VllmEnvError, ensure
from vllm_pool import register_kind
from vllm_pool.agent import AgentError, AgentSettings, ReplicaAgent
from vllm_pool.backend import PoolBackend
from vllm_pool.engine_probe import EngineProbe, GrpcEngineProbe, HttpEngineProbe
from vllm_pool.replica import PoolReplica
from vllm_pool.server import PoolServer, start_pool_server
from vllm_pool.view import PoolView

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

STARTUP_TIMEOUT_S = 600
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Engines:
    http: VllmEngine
    grpc: VllmEngine

    def of(self, replica_id: str) -> VllmEngine:
        return self.http if replica_id == "http-0" else self.grpc


def _unavailable(message: str) -> None:
    if os.environ.get("IMESH_REQUIRE_VLLM") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """Both engines, started together, stopped at the end of the session."""
    try:
        python = ensure()
    except VllmEnvError as exc:
        _unavailable(f"no vLLM environment: {exc}")
    root = tmp_path_factory.mktemp("vllm")
    model = write_tiny_model(root / "model")
    started = Engines(
        http=start_engine(python, model, "http", root),
        grpc=start_engine(python, model, "grpc", root),
    )
    try:
        wait_ready(started.http, STARTUP_TIMEOUT_S)
        wait_ready(started.grpc, STARTUP_TIMEOUT_S)
    except EngineFailed as exc:
        started.http.stop()
        started.grpc.stop()
        _unavailable(str(exc))
    yield started
    started.http.stop()
    started.grpc.stop()


@dataclass
class Mesh:
    pool: PoolServer
    stub: Any  # PoolServiceAsyncStub
    agents: dict[str, tuple[ReplicaAgent, asyncio.Event, asyncio.Task[None]]]
    probes: dict[str, EngineProbe]
    backend: PoolBackend
    router: ChatRouter

    def replica(self, replica_id: str) -> PoolReplica:
        return next(r for r in self.backend.view.replicas() if r.id == replica_id)

    def calls(self) -> dict[str, int]:
        return {r.id: r.calls for r in self.backend.view.replicas()}

    async def drain(self, replica_id: str) -> None:
        await self.stub.Drain(pb.DrainRequest(pool="gpu", replica_id=replica_id), metadata=AUTH)
        await until(lambda: _is_draining(self, replica_id))


async def _is_draining(mesh: Mesh, replica_id: str) -> bool:
    return not mesh.replica(replica_id).ready


@pytest.fixture
async def mesh(engines: Engines, pool_token: str) -> AsyncIterator[Mesh]:
    # Generous leases: two engines and the tests share two cores, so reads and heartbeats
    # can run seconds late.
    pool = await start_pool_server(service_config(pool_token, lease_s=120.0, heartbeat_s=0.5))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{pool.port}")
    probes: dict[str, EngineProbe] = {}
    agents: dict[str, tuple[ReplicaAgent, asyncio.Event, asyncio.Task[None]]] = {}
    for rid, engine in (("http-0", engines.http), ("grpc-0", engines.grpc)):
        if not engine.alive:
            continue
        # Patient reads: on two shared cores a busy engine answers seconds late.
        probe: EngineProbe = (
            HttpEngineProbe(engine.address, timeout_s=10)
            if engine.kind == "http"
            else GrpcEngineProbe(engine.address, timeout_s=10)
        )
        agent = ReplicaAgent(
            probe,
            channel,
            AgentSettings(
                pool="gpu", replica_id=rid, token=TOKEN, drain_timeout_s=60, stale_load_s=90
            ),
        )
        stop = asyncio.Event()
        probes[rid] = probe
        agents[rid] = (agent, stop, asyncio.create_task(agent.run(stop)))
    async with asyncio.timeout(60):
        for agent, _, _ in agents.values():
            await agent.registered.wait()
    config = parse_config(
        {
            "providers": {
                "gpu": {
                    "kind": "vllm_pool",
                    "pool": "gpu",
                    "address": f"127.0.0.1:{pool.port}",
                    "token": pool_token,
                    "affinity_prefix_chars": 64,
                }
            },
            "deployments": [{"name": "tiny-pool", "provider": "gpu", "model": MODEL_NAME}],
            "aliases": {"tiny": {"candidates": ["tiny-pool"]}},
        }
    )
    register_kind()
    backends = build_backends(config.providers)
    backend = backends["gpu"]
    assert isinstance(backend, PoolBackend)
    router = ChatRouter(config, backends)
    stub = pool_service_pb2_grpc.PoolServiceStub(channel)
    built = Mesh(pool, stub, agents, probes, backend, router)
    await until(lambda: _synced(built, len(agents)))
    yield built
    await router.aclose()
    for _, stop, task in agents.values():
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
    for probe in probes.values():
        await probe.aclose()
    await channel.close(None)
    await pool.stop(0)


async def _synced(mesh: Mesh, count: int) -> bool:
    mesh.backend.view.start()
    return len([r for r in mesh.backend.view.replicas() if r.ready]) == count


def chat(text: str = "hello there", max_tokens: int = 8, **fields: Any) -> chat_pb2.ChatInput:
    return chat_pb2.ChatInput(
        model="tiny",
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=text)])
        ],
        max_tokens=max_tokens,
        **fields,
    )


async def stream(mesh: Mesh, request: chat_pb2.ChatInput) -> list[events_pb2.ChatEvent]:
    return [e async for e in mesh.router.chat_stream(request, CallContext(timeout=60))]


def usage_of(events: list[events_pb2.ChatEvent]) -> events_pb2.Usage:
    return [e.usage for e in events if e.HasField("usage")][-1]


async def running_on(mesh: Mesh, replica_id: str) -> int:
    load = await mesh.probes[replica_id].load()
    return load.running + load.waiting


def vllm_counter(engine: VllmEngine, name: str) -> float:
    page = httpx.get(f"{engine.address}/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == name
    )


async def test_replicas_register_and_a_stream_flows_through_the_router(mesh: Mesh) -> None:
    listed = await mesh.stub.ListReplicas(pb.ListReplicasRequest(pool="gpu"), metadata=AUTH)
    kinds = {r.spec.replica_id: (r.spec.transport, list(r.spec.models)) for r in listed.replicas}

    events = await stream(mesh, chat())

    assert kinds == {
        "http-0": (pb.REPLICA_TRANSPORT_HTTP, [MODEL_NAME]),
        "grpc-0": (pb.REPLICA_TRANSPORT_GRPC, [MODEL_NAME]),
    }
    assert events[0].HasField("start")
    assert events[-1].HasField("finish")
    assert any(e.HasField("content") for e in events)


@pytest.mark.parametrize("target", ["http-0", "grpc-0"])
async def test_usage_equals_vllms_own_token_counts(
    mesh: Mesh, engines: Engines, target: str
) -> None:
    other = "grpc-0" if target == "http-0" else "http-0"
    await mesh.drain(other)
    request = chat("count these tokens, please", max_tokens=12)
    async with httpx.AsyncClient(base_url=engines.http.address, timeout=10) as http:
        tokenized = await http.post(
            "/tokenize",
            json={
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": "count these tokens, please"}],
                "add_generation_prompt": True,
            },
        )
    expected_prompt = tokenized.json()["count"]
    generated_before = (
        vllm_counter(engines.http, "vllm:generation_tokens_total") if target == "http-0" else 0
    )

    usage = usage_of(await stream(mesh, request))

    assert (usage.prompt_tokens, usage.estimated) == (expected_prompt, False)
    assert usage.completion_tokens == 12  # the tiny model never ends on its own
    if target == "http-0":
        generated = vllm_counter(engines.http, "vllm:generation_tokens_total") - generated_before
        assert usage.completion_tokens == generated


async def test_load_aware_picking_prefers_the_idle_replica(
    mesh: Mesh, engines: Engines, pool_token: str
) -> None:
    # Without affinity, so the load score alone decides (bounded-load affinity may keep a
    # prefix on a replica under its bound: tests/vllm_pool/test_picker.py pins that).
    by_load = PoolBackend(
        VllmPoolConfig(
            kind="vllm_pool",
            pool="gpu",
            address=f"127.0.0.1:{mesh.pool.port}",
            token=pool_token,
            affinity_prefix_chars=0,
        )
    )
    picks: list[tuple[str, dict[str, float]]] = []
    async with httpx.AsyncClient(base_url=engines.http.address, timeout=120) as http:
        busy = [asyncio.create_task(_keep_busy(http, i)) for i in range(4)]
        await until(lambda: _busy_in(by_load.view, "http-0", 3), timeout_s=60)

        for i in range(6):
            # The load as the router sees it (heartbeats of vLLM's own metrics) just before
            # the pick, and which replica the call went to.
            scores = {r.id: r.score for r in by_load.view.replicas()}
            before = {r.id: r.calls for r in by_load.view.replicas()}
            request = _generate(chat(f"an unrelated question number {i}", max_tokens=2))
            async for _ in by_load.chat(request, Deadline.after(120)):
                pass
            after = {r.id: r.calls for r in by_load.view.replicas()}
            picked = next(rid for rid, n in after.items() if n > before.get(rid, 0))
            picks.append((picked, scores))

        for task in busy:
            task.cancel()  # the engine aborts a request whose client hung up
        await asyncio.gather(*busy, return_exceptions=True)
    await by_load.aclose()

    # The busy engine's real load reached the router...
    assert picks[0][1]["http-0"] > picks[0][1]["grpc-0"]
    # ...and every call went to the replica with the lower load score at that moment (a
    # heartbeat read between two busy requests may show a dip: then the busy one is fair).
    for picked, scores in picks:
        assert scores[picked] <= min(scores.values()), (picked, scores)


async def _busy_in(view: PoolView, replica_id: str, at_least: int) -> bool:
    view.start()
    load = next((r.record.load for r in view.replicas() if r.id == replica_id), None)
    return load is not None and load.running + load.waiting >= at_least


async def _keep_busy(http: httpx.AsyncClient, n: int) -> None:
    """Long completions on one engine, one after another, until cancelled. Not streamed:
    the engine works as hard, and the test's own process stays idle."""
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": f"keep busy {n}"}],
        "max_tokens": 3000,  # seconds of work on two shared cores
        "ignore_eos": True,
    }
    while True:
        await http.post("/v1/chat/completions", json=body)


async def test_prefix_affinity_sends_a_repeated_prefix_to_the_same_replica(mesh: Mesh) -> None:
    system = "You are the pool's test assistant. Answer in one word. " * 2
    before = mesh.calls()

    for i in range(6):
        request = chat(f"question {i}", max_tokens=2)
        request.messages.insert(
            0,
            chat_pb2.Message(
                role=chat_pb2.ROLE_SYSTEM, content=[chat_pb2.ContentPart(text=system)]
            ),
        )
        await stream(mesh, request)

    served = {rid: n - before[rid] for rid, n in mesh.calls().items() if n - before[rid]}
    assert list(served.values()) == [6]


async def test_a_caller_affinity_key_keeps_a_conversation_on_one_replica(mesh: Mesh) -> None:
    before = mesh.calls()

    for i in range(6):
        request = chat(f"turn {i} of a different text each time", max_tokens=2)
        request.routing.affinity_key = "conversation-42"
        await stream(mesh, request)

    served = {rid: n - before[rid] for rid, n in mesh.calls().items() if n - before[rid]}
    assert list(served.values()) == [6]


async def test_a_draining_replica_finishes_its_stream_and_gets_no_new_requests(
    mesh: Mesh,
) -> None:
    long = mesh.router.chat_stream(chat("a long answer", max_tokens=600), CallContext(timeout=120))
    first = await anext(long)
    served_by = next(r.id for r in mesh.backend.view.replicas() if r.in_flight)
    other = "grpc-0" if served_by == "http-0" else "http-0"
    _, stop, task = mesh.agents[served_by]

    stop.set()  # what SIGTERM does in `imesh replica-agent`
    await until(lambda: _left(mesh, served_by))
    before = mesh.calls()[other]
    await stream(mesh, chat("while draining", max_tokens=2))
    rest = [event async for event in long]

    assert first.HasField("start")
    assert rest[-1].HasField("finish")
    assert mesh.calls()[other] == before + 1
    async with asyncio.timeout(60):
        await task  # the agent exits once its in-flight request is done


async def _left(mesh: Mesh, replica_id: str) -> bool:
    return all(r.id != replica_id for r in mesh.backend.view.replicas())


@pytest.mark.parametrize("target", ["http-0", "grpc-0"])
async def test_a_cancel_reaches_vllm(mesh: Mesh, target: str) -> None:
    other = "grpc-0" if target == "http-0" else "http-0"
    await mesh.drain(other)
    request = chat("a long answer to cancel", max_tokens=3000)
    events = cast(
        AsyncGenerator[Batch, None], mesh.backend.chat(_generate(request), Deadline.after(120))
    )
    await anext(events)
    await until(lambda: _running(mesh, target), timeout_s=30)

    await events.aclose()

    await until(lambda: _idle(mesh, target), timeout_s=30)


async def _running(mesh: Mesh, replica_id: str) -> bool:
    load = await _load_while_busy(mesh, replica_id)
    return load is not None and load >= 1


async def _idle(mesh: Mesh, replica_id: str) -> bool:
    load = await _load_while_busy(mesh, replica_id)
    return load is not None and load == 0


async def _load_while_busy(mesh: Mesh, replica_id: str) -> int | None:
    """The engine's load, or None when it is too busy generating (on CPU) to answer the
    load probe within the probe's deadline: not known yet, ask again."""
    try:
        return await running_on(mesh, replica_id)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            return None
        raise


def _generate(request: chat_pb2.ChatInput) -> Any:
    from imesh.v1 import adapter_service_pb2

    return adapter_service_pb2.GenerateRequest(
        input=request, provider_model=MODEL_NAME, deployment="tiny-pool"
    )


async def test_a_registration_with_a_wrong_token_is_refused(mesh: Mesh, engines: Engines) -> None:
    probe = HttpEngineProbe(engines.http.address)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mesh.pool.port}")
    rogue = ReplicaAgent(
        probe, channel, AgentSettings(pool="gpu", replica_id="rogue", token="guessed")
    )

    with pytest.raises(AgentError):
        await rogue.run(asyncio.Event())

    await probe.aclose()
    await channel.close(None)
    listed = await mesh.stub.ListReplicas(pb.ListReplicasRequest(pool="gpu"), metadata=AUTH)
    assert "rogue" not in {r.spec.replica_id for r in listed.replicas}


async def test_imesh_pool_list_shows_the_replicas(mesh: Mesh, pool_token: str) -> None:
    listing = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "router.cli.main",
            "pool",
            "list",
            "--pool",
            f"127.0.0.1:{mesh.pool.port}",
            "--token",
            pool_token,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )

    assert listing.returncode == 0, listing.stderr
    assert "http-0" in listing.stdout
    assert "grpc-0" in listing.stdout


async def test_imesh_replica_agent_registers_and_deregisters_on_sigterm(
    mesh: Mesh, engines: Engines, pool_token: str
) -> None:
    command = [
        *(sys.executable, "-m", "router.cli.main", "replica-agent"),
        *("--vllm-grpc", engines.grpc.address, "--pool", f"127.0.0.1:{mesh.pool.port}"),
        *("--pool-name", "cli", "--replica-id", "cli-0", "--token", pool_token),
    ]
    agent = await asyncio.create_subprocess_exec(*command, cwd=REPO)
    try:
        await until(lambda: _listed(mesh, "cli", "cli-0"), timeout_s=60)

        agent.send_signal(signal.SIGTERM)

        await until(lambda: _unlisted(mesh, "cli", "cli-0"), timeout_s=30)
        async with asyncio.timeout(30):
            assert await agent.wait() == 0
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()


async def _listed(mesh: Mesh, pool: str, replica_id: str) -> bool:
    answer = await mesh.stub.ListReplicas(pb.ListReplicasRequest(pool=pool), metadata=AUTH)
    return any(r.spec.replica_id == replica_id for r in answer.replicas)


async def _unlisted(mesh: Mesh, pool: str, replica_id: str) -> bool:
    return not await _listed(mesh, pool, replica_id)


async def test_killing_a_replica_mid_stream_gives_a_typed_error_and_the_survivor_serves(
    mesh: Mesh, engines: Engines
) -> None:
    long = mesh.router.chat_stream(chat("a long answer", max_tokens=3000), CallContext(timeout=120))
    await anext(long)
    victim = next(r.id for r in mesh.backend.view.replicas() if r.in_flight)
    survivor = "grpc-0" if victim == "http-0" else "http-0"

    engines.of(victim).kill()
    seen: list[events_pb2.ChatEvent] = []
    with pytest.raises(MeshError) as caught:
        await _read_into(long, seen)
    assert seen[-1].HasField("error"), seen[-3:]
    before = mesh.calls()[survivor]
    after_kill = await stream(mesh, chat("are you there?", max_tokens=2))

    assert caught.value.reason is Reason.UPSTREAM_INTERRUPTED
    assert caught.value.usage is not None
    assert caught.value.usage.completion_tokens > 0
    assert after_kill[-1].HasField("finish")
    assert mesh.calls()[survivor] == before + 1


async def _read_into(
    events: AsyncIterator[events_pb2.ChatEvent], seen: list[events_pb2.ChatEvent]
) -> None:
    async for event in events:
        seen.append(event)
