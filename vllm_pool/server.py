"""The pool service as a running gRPC server: PoolService over a store, grpc.health.v1,
reflection; the mesh's shared server options, TLS when configured."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from adapters.grpc_options import server_options
from adapters.hop_auth import ServerSecurity, TokenChecker, resolve_token
from adapters.pool_config import PoolServiceConfig
from imesh.v1 import pool_service_pb2, pool_service_pb2_grpc
from vllm_pool.redis_store import RedisReplicaStore
from vllm_pool.service import PoolServicer
from vllm_pool.store import MemoryReplicaStore, ReplicaStore

SERVICE_NAME = pool_service_pb2.DESCRIPTOR.services_by_name["PoolService"].full_name


class PoolServer:
    """A started server. `stop(grace_s)` ends watch streams and closes the store."""

    def __init__(
        self, server: grpc.aio.Server, port: int, store: ReplicaStore, servicer: PoolServicer
    ) -> None:
        self._server = server
        self.port = port
        self.store = store
        self._servicer = servicer

    async def stop(self, grace_s: float = 1.0) -> None:
        await self._server.stop(grace_s)
        await self._servicer.aclose()
        await self.store.aclose()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def start_pool_server(
    config: PoolServiceConfig, *, store: ReplicaStore | None = None
) -> PoolServer:
    """Binds `config.listen` (port 0 picks a free port) and starts serving. Resolves the
    tokens, the TLS files and the Redis URL now: a missing one raises KeyError naming it."""
    agent = [resolve_token(ref) for ref in config.agent_tokens]
    reader = [resolve_token(ref) for ref in config.reader_tokens]
    if set(agent) & set(reader):
        raise ValueError("an agent token must not also be a reader token")
    security = ServerSecurity.tls_only(config.tls)
    if store is None:
        store = (
            RedisReplicaStore.from_url(config.redis_url.resolve())
            if config.redis_url is not None
            else MemoryReplicaStore()
        )
    servicer = PoolServicer(
        store,
        agents=TokenChecker(agent),
        readers=TokenChecker([*reader, *agent]),
        lease_s=config.lease_s,
        heartbeat_s=config.heartbeat_s,
        poll_s=config.poll_s,
    )
    server = grpc.aio.server(options=server_options())
    pool_service_pb2_grpc.add_PoolServiceServicer_to_server(servicer, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = security.add_port(server, config.listen)
    await server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return PoolServer(server, port, store, servicer)
