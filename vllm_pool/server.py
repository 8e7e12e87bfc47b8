"""The pool service as a running gRPC server: PoolService over a store, grpc.health.v1,
reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from imesh.v1 import pool_service_pb2, pool_service_pb2_grpc
from vllm_pool.config import PoolServiceConfig
from vllm_pool.redis_store import RedisReplicaStore
from vllm_pool.service import PoolServicer
from vllm_pool.store import MemoryReplicaStore, ReplicaStore

SERVICE_NAME = pool_service_pb2.DESCRIPTOR.services_by_name["PoolService"].full_name


class PoolServer:
    """A started server. `stop(grace_s)` ends watch streams and closes the store."""

    def __init__(self, server: grpc.aio.Server, port: int, store: ReplicaStore) -> None:
        self._server = server
        self.port = port
        self.store = store

    async def stop(self, grace_s: float = 1.0) -> None:
        await self._server.stop(grace_s)
        await self.store.aclose()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def start_pool_server(
    config: PoolServiceConfig, *, store: ReplicaStore | None = None
) -> PoolServer:
    """Binds `config.listen` (port 0 picks a free port) and starts serving."""
    if store is None:
        store = (
            RedisReplicaStore.from_url(config.redis_url)
            if config.redis_url
            else MemoryReplicaStore()
        )
    servicer = PoolServicer(
        store,
        token=config.token.resolve(),
        lease_s=config.lease_s,
        heartbeat_s=config.heartbeat_s,
        poll_s=config.poll_s,
    )
    server = grpc.aio.server()
    pool_service_pb2_grpc.add_PoolServiceServicer_to_server(servicer, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"cannot bind {config.listen}")
    await server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return PoolServer(server, port, store)
