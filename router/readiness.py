"""grpc.health.v1 with readiness: "" says the process is alive, the ChatService entry says
whether it can take traffic now (some deployment's breaker is closed).

Kubernetes probes liveness on "" and readiness on "imesh.v1.ChatService": a router whose
providers are all down stops receiving traffic without being restarted.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from imesh.api import ChatAPI

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ReadinessHealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """Check on `service` asks the api, unless the stored status says otherwise (draining)."""

    def __init__(self, api: ChatAPI, service: str) -> None:
        super().__init__()
        self._api = api
        self._service = service

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        response = await super().Check(request, context)
        if request.service != self._service or response.status != SERVING:
            return response
        ready = await self._api.ready()
        return health_pb2.HealthCheckResponse(status=SERVING if ready else NOT_SERVING)
