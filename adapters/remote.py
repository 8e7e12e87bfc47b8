"""RemoteBackend: a Backend that calls an adapter served by `imesh adapter` over gRPC."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import grpc

from adapters.backend import Backend, Batch
from adapters.config import RemoteConfig
from adapters.deadline import Deadline
from adapters.hop_auth import ClientSecurity
from imesh.errors import MeshError, Reason
from imesh.v1 import adapter_service_pb2, adapter_service_pb2_grpc, events_pb2

# Without a local pool, channels to one target share a single connection.
_CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


class RemoteBackend(Backend):
    """Spreads calls round-robin over `config.channels` channels to one adapter service.

    Errors keep their code, reason and retry_after across the hop; an adapter that cannot
    be reached is UNAVAILABLE "ADAPTER_UNAVAILABLE", one that refuses the service token
    UNAUTHENTICATED "ADAPTER_UNAUTHENTICATED". Closing the iterator cancels the call.
    The token and TLS files are read when this is built (a missing one fails start-up);
    channels are opened lazily, inside the event loop that uses them.
    """

    def __init__(self, config: RemoteConfig) -> None:
        self._config = config
        self._security = ClientSecurity.from_config(config.tls, config.token)
        self._stubs: list[adapter_service_pb2_grpc.AdapterServiceAsyncStub] = []
        self._channels: list[grpc.aio.Channel] = []
        self._next = itertools.count()

    def _stub(self) -> adapter_service_pb2_grpc.AdapterServiceAsyncStub:
        if not self._stubs:
            for _ in range(self._config.channels):
                channel = self._security.channel(self._config.address, _CHANNEL_OPTIONS)
                self._channels.append(channel)
                self._stubs.append(adapter_service_pb2_grpc.AdapterServiceStub(channel))
        return self._stubs[next(self._next) % len(self._stubs)]

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        """Each message the adapter sends is one batch, as the adapter's backend made it."""
        timeout: float | None = None
        if deadline.bounded:
            timeout = deadline.remaining()
            if timeout <= 0:
                raise MeshError.of(
                    Reason.UPSTREAM_TIMEOUT, "deadline passed before the adapter call"
                )
        call = self._stub().Generate(request, timeout=timeout, metadata=self._security.metadata)
        last_usage: events_pb2.Usage | None = None
        try:
            async for response in call:
                batch = list(response.events)
                for event in reversed(batch):
                    if event.HasField("usage"):
                        last_usage = event.usage
                        break
                yield batch
        except grpc.aio.AioRpcError as exc:
            raise self._mesh_error(exc, last_usage) from None
        finally:
            # No-op when the call has ended; otherwise tells the adapter to stop at once.
            call.cancel()

    def _mesh_error(self, exc: grpc.aio.AioRpcError, usage: events_pb2.Usage | None) -> MeshError:
        err = MeshError.from_rpc_error(exc)
        if err.reason is Reason.UNSPECIFIED and err.code is grpc.StatusCode.UNAVAILABLE:
            # No ErrorInfo: the transport failed, not the provider behind the adapter.
            err = err.replace(
                reason=Reason.ADAPTER_UNAVAILABLE,
                message=f"adapter at {self._config.address} unavailable: {err.message}",
            )
        return err.with_usage(usage) if usage is not None else err

    async def aclose(self) -> None:
        channels, self._channels, self._stubs = self._channels, [], []
        for channel in channels:
            await channel.close(None)
