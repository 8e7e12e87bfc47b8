"""AdapterService: serves any Backend over gRPC, so an adapter can run as its own service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Final

import grpc
from grpc_health.v1 import _async as health_aio  # health.aio, which the stubs lack
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from adapters.backend import Backend
from adapters.deadline import Deadline
from adapters.grpc_options import server_options
from adapters.hop_auth import ServerSecurity
from adapters.http_errors import truncate_utf8
from imesh.errors import MeshError, Reason
from imesh.v1 import adapter_service_pb2, adapter_service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME: Final = adapter_service_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name


class AdapterServicer(adapter_service_pb2_grpc.AdapterServiceServicer):
    """Relays one Backend's events as GenerateResponse batches.

    Each batch the backend yields goes out as one message, at once; closing the call
    closes the backend's iterator.
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def Generate(
        self,
        request: adapter_service_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[
            adapter_service_pb2.GenerateRequest, adapter_service_pb2.GenerateResponse
        ],
    ) -> AsyncIterator[adapter_service_pb2.GenerateResponse]:
        remaining = context.time_remaining()
        deadline = Deadline.after(remaining)
        # One message per batch: the backend already batched what one upstream read gave.
        stream = self._backend.chat(request, deadline)
        try:
            async for batch in stream:
                yield adapter_service_pb2.GenerateResponse(events=batch)
            return
        except Exception as exc:  # any usage yielded before the failure was relayed above
            failure = _as_mesh_error(exc)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        # A status past gRPC's trailer limit reaches the caller as a bare RESOURCE_EXHAUSTED:
        # keep the message short so the code, reason and retry_after arrive.
        failure = failure.replace(message=truncate_utf8(failure.message))
        status = failure.to_status()
        await context.abort(status.code, status.details, status.trailing_metadata)


def _as_mesh_error(exc: BaseException) -> MeshError:
    if isinstance(exc, MeshError):
        return exc
    log.error("backend raised an unexpected error", exc_info=exc)
    return MeshError.of(Reason.BACKEND_CRASHED, "the adapter failed unexpectedly")


class AdapterServer:
    """A running adapter server: `.port` (and `.health_port`), `await stop(grace)`."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health_servicer: health_aio.HealthServicer,
        health_server: grpc.aio.Server | None = None,
        health_port: int | None = None,
    ) -> None:
        self._server = server
        self.port = port
        self._health = health_servicer
        self._health_server = health_server
        self.health_port = health_port

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight streams finish for `grace` s, then cancel them."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(None)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def start_adapter_server(
    backend: Backend,
    listen: str,
    security: ServerSecurity,
    *,
    health_listen: str | None = None,
) -> AdapterServer:
    """Serve `backend` as an AdapterService on `listen` ("host:port"; port 0 picks one),
    letting in only the calls `security` admits (adapters.hop_auth).

    `health_listen`: also serve grpc.health.v1 alone, in plaintext, on that address, for
    probes that cannot speak TLS (kubelet's gRPC probe).
    """
    server = grpc.aio.server(interceptors=security.interceptors, options=server_options())
    adapter_service_pb2_grpc.add_AdapterServiceServicer_to_server(AdapterServicer(backend), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            "grpc.reflection.v1alpha.ServerReflection",
        ],
        server,
    )
    port = security.add_port(server, listen)
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    if health_listen is not None:
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = ServerSecurity().add_port(health_server, health_listen)
    await server.start()
    if health_server is not None:
        await health_server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return AdapterServer(server, port, health_servicer, health_server, health_port)
