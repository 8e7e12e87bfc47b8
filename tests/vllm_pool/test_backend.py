"""PoolBackend over a real pool service, with fake replica transports: where calls go,
retries before the first token, typed interruption after it, health, and closing."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import cast

import grpc
import pytest

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from adapters.pool_config import VllmPoolConfig
from imesh.errors import MeshError, Reason
from imesh.v1 import adapter_service_pb2, chat_pb2, events_pb2, pool_service_pb2_grpc
from imesh.v1 import pool_service_pb2 as pb
from tests.vllm_pool.conftest import AUTH, TOKEN, until
from vllm_pool.backend import PoolBackend
from vllm_pool.health import ReplicaHealth
from vllm_pool.server import PoolServer
from vllm_pool.view import PoolView


class FakeReplica(Backend):
    """Streams two content batches, then usage and finish; or fails as told."""

    def __init__(self) -> None:
        self.calls = 0
        self.open = 0
        self.fail_before_output: MeshError | None = None
        self.fail_after_output: MeshError | None = None

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        self.calls += 1
        self.open += 1
        try:
            if self.fail_before_output is not None:
                raise self.fail_before_output
            yield [events_pb2.ChatEvent(content=events_pb2.ContentDelta(text="a"))]
            if self.fail_after_output is not None:
                usage = events_pb2.Usage(prompt_tokens=3, completion_tokens=1)
                yield [events_pb2.ChatEvent(usage=usage)]
                raise self.fail_after_output.replace(reason=Reason.UPSTREAM_INTERRUPTED)
            yield [events_pb2.ChatEvent(content=events_pb2.ContentDelta(text="b"))]
            yield [
                events_pb2.ChatEvent(usage=events_pb2.Usage(prompt_tokens=3, completion_tokens=2)),
                events_pb2.ChatEvent(
                    finish=events_pb2.Finish(reason=events_pb2.FINISH_REASON_STOP)
                ),
            ]
        finally:
            self.open -= 1


class Pool:
    def __init__(self, server: PoolServer, channel: grpc.aio.Channel) -> None:
        self.stub = pool_service_pb2_grpc.PoolServiceStub(channel)
        self.fakes: dict[str, FakeReplica] = {}
        self.address = f"127.0.0.1:{server.port}"

    def build(self, spec: pb.ReplicaSpec) -> Backend:
        return self.fakes.setdefault(spec.replica_id, FakeReplica())

    async def add(self, rid: str, model: str = "tiny", running: int = 0) -> None:
        spec = pb.ReplicaSpec(
            pool="gpu",
            replica_id=rid,
            transport=pb.REPLICA_TRANSPORT_HTTP,
            address=f"http://{rid}:8000",
            models=[model],
        )
        await self.stub.Register(
            pb.RegisterRequest(spec=spec, load=pb.ReplicaLoad(running=running)), metadata=AUTH
        )


@pytest.fixture
async def pool(pool_server: PoolServer) -> AsyncIterator[Pool]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{pool_server.port}") as channel:
        yield Pool(pool_server, channel)


@pytest.fixture
async def backend(pool: Pool, pool_token: str) -> AsyncIterator[PoolBackend]:
    config = VllmPoolConfig(
        kind="vllm_pool", pool="gpu", address=pool.address, token=pool_token, eject_after_failures=1
    )
    view = PoolView(
        grpc.aio.insecure_channel(pool.address),
        pool="gpu",
        token=TOKEN,
        build_backend=pool.build,
        build_health=lambda: ReplicaHealth(eject_after=1, eject_s=60, max_eject_s=60),
    )
    built = PoolBackend(config, view=view, rng=random.Random(4))
    yield built
    await built.aclose()


def generate(text: str = "hi", model: str = "tiny") -> adapter_service_pb2.GenerateRequest:
    chat = chat_pb2.ChatInput(
        model="alias",
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=text)])
        ],
    )
    return adapter_service_pb2.GenerateRequest(input=chat, provider_model=model)


async def collect(
    backend: PoolBackend, request: adapter_service_pb2.GenerateRequest
) -> list[Batch]:
    return [batch async for batch in backend.chat(request, Deadline.after(10))]


async def synced(backend: PoolBackend, n: int) -> None:
    async def ready() -> bool:
        backend.view.start()
        return len([r for r in backend.view.replicas() if r.ready]) == n

    await until(ready)


async def test_a_call_streams_from_a_replica(pool: Pool, backend: PoolBackend) -> None:
    await pool.add("r1")

    batches = await collect(backend, generate())

    assert batches[-1][-1].HasField("finish")
    assert pool.fakes["r1"].calls == 1


async def test_only_replicas_serving_the_model_are_called(pool: Pool, backend: PoolBackend) -> None:
    await pool.add("other", model="big")
    await pool.add("r1")
    await synced(backend, 2)

    for i in range(5):
        await collect(backend, generate(f"q{i}"))

    assert (pool.fakes["r1"].calls, pool.fakes["other"].calls) == (5, 0)


async def test_no_replica_for_the_model_is_upstream_unavailable(
    pool: Pool, backend: PoolBackend
) -> None:
    await pool.add("r1", model="big")

    with pytest.raises(MeshError) as caught:
        await collect(backend, generate())

    assert caught.value.reason is Reason.UPSTREAM_UNAVAILABLE


async def test_a_failure_before_output_moves_the_call_to_another_replica(
    pool: Pool, backend: PoolBackend
) -> None:
    await pool.add("r1")
    await pool.add("r2")
    await synced(backend, 2)
    for fake in pool.fakes.values():
        fake.fail_before_output = MeshError.of(Reason.UPSTREAM_UNAVAILABLE, "connection refused")
    pool.fakes["r2"].fail_before_output = None

    batches = await collect(backend, generate())

    assert batches[-1][-1].HasField("finish")


async def test_a_failure_after_output_is_interrupted_with_usage_and_not_retried(
    pool: Pool, backend: PoolBackend
) -> None:
    await pool.add("r1")
    await pool.add("r2")
    await synced(backend, 2)
    for fake in pool.fakes.values():
        fake.fail_after_output = MeshError.of(Reason.UPSTREAM_UNAVAILABLE, "reset")

    with pytest.raises(MeshError) as caught:
        await collect(backend, generate())

    assert caught.value.reason is Reason.UPSTREAM_INTERRUPTED
    assert sum(f.calls for f in pool.fakes.values()) == 1


async def test_a_failing_replica_is_ejected(pool: Pool, backend: PoolBackend) -> None:
    await pool.add("r1")
    await pool.add("r2")
    await synced(backend, 2)
    pool.fakes["r1"].fail_before_output = MeshError.of(Reason.UPSTREAM_UNAVAILABLE, "down")
    for i in range(4):
        await collect(backend, generate(f"q{i}"))
    calls = pool.fakes["r1"].calls

    for i in range(6):
        await collect(backend, generate(f"later {i}"))

    assert pool.fakes["r1"].calls == calls  # ejected after its first failure


async def test_the_callers_own_fault_ejects_no_replica(pool: Pool, backend: PoolBackend) -> None:
    await pool.add("r1")
    await synced(backend, 1)
    pool.fakes["r1"].fail_before_output = MeshError.of(Reason.UPSTREAM_BAD_REQUEST, "bad")
    with pytest.raises(MeshError):
        await collect(backend, generate())
    pool.fakes["r1"].fail_before_output = None

    assert (await collect(backend, generate()))[-1][-1].HasField("finish")


async def test_a_draining_replica_gets_no_new_calls(pool: Pool, backend: PoolBackend) -> None:
    await pool.add("r1")
    await pool.add("r2")
    await synced(backend, 2)

    await pool.stub.Drain(pb.DrainRequest(pool="gpu", replica_id="r1"), metadata=AUTH)
    await synced(backend, 1)
    for i in range(5):
        await collect(backend, generate(f"q{i}"))

    assert pool.fakes["r1"].calls == 0


async def test_closing_the_call_closes_the_replicas_stream_at_once(
    pool: Pool, backend: PoolBackend
) -> None:
    await pool.add("r1")
    stream = cast(AsyncGenerator[Batch, None], backend.chat(generate(), Deadline.after(10)))

    async with aclosing(stream):
        await anext(stream)
        assert pool.fakes["r1"].open == 1

    assert pool.fakes["r1"].open == 0
    assert backend.view.replicas()[0].in_flight == 0


async def test_calls_with_one_affinity_key_go_to_one_replica(
    pool: Pool, backend: PoolBackend
) -> None:
    for rid in ("r1", "r2", "r3", "r4"):
        await pool.add(rid)
    await synced(backend, 4)

    for i in range(6):
        request = generate(f"a different prompt each time {i}")
        request.input.routing.affinity_key = "conversation-42"
        await collect(backend, request)

    called = {rid: fake.calls for rid, fake in pool.fakes.items() if fake.calls}
    assert list(called.values()) == [6]
