"""The router's view of a pool keeps watching whatever breaks a watch stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from adapters.backend import Backend
from adapters.config import SimulatedConfig
from adapters.simulated import SimulatedBackend
from imesh.v1 import pool_service_pb2 as pb
from vllm_pool.health import ReplicaHealth
from vllm_pool.view import PoolView


class FlakyStub:
    """WatchReplicas fails with a non-gRPC error first, then streams one snapshot."""

    def __init__(self) -> None:
        self.calls = 0

    def WatchReplicas(self, request: pb.WatchReplicasRequest, **_: Any) -> AsyncIterator[Any]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in a transport layer")
        return self._stream()

    async def _stream(self) -> AsyncIterator[pb.WatchReplicasResponse]:
        spec = pb.ReplicaSpec(pool="gpu", replica_id="r1", address="http://r1", models=["m"])
        yield pb.WatchReplicasResponse(replicas=[pb.Replica(spec=spec)])
        await asyncio.Event().wait()


def _backend(spec: pb.ReplicaSpec) -> Backend:
    return SimulatedBackend(SimulatedConfig(kind="simulated"))


async def test_a_watch_error_that_is_not_grpc_is_logged_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    view = PoolView(
        grpc.aio.insecure_channel("127.0.0.1:1"),
        pool="gpu",
        token="t",
        build_backend=_backend,
        build_health=lambda: ReplicaHealth(eject_after=1, eject_s=1, max_eject_s=1),
        retry_s=0.01,
    )
    stub = FlakyStub()
    view._stub = stub  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="vllm_pool.view"):
        view.start()
        async with asyncio.timeout(5):
            await view.synced.wait()
    listed = [r.id for r in view.replicas()]
    await view.aclose()

    assert stub.calls == 2
    assert listed == ["r1"]
    assert "watching pool gpu" in caplog.text
