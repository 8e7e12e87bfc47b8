"""The gRPC face of any ChatAPI: ChatService, health, reflection, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from adapters.config import ServerTLS
from adapters.grpc_options import server_options
from adapters.hop_auth import ServerSecurity
from imesh.api import CallContext, ChatAPI
from imesh.errors import MeshError
from imesh.v1 import chat_service_pb2, chat_service_pb2_grpc
from router.readiness import ReadinessHealthServicer

log = logging.getLogger(__name__)

SERVICE_NAME = chat_service_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
# A caller's request id is echoed into logs and events: keep it short and printable.
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")

_Context = grpc.aio.ServicerContext[Any, Any]
# How long stop() waits, after grpc cancelled the calls, for their handlers to unwind
# (close their upstream calls, record their attempts). Closing a stream is quick; this
# only bounds a backend whose teardown hangs.
UNWIND_S = 5.0


def call_context(context: _Context) -> CallContext:
    """Key ("authorization: Bearer K" or "x-api-key"), request id and deadline of a call.
    A call without a usable request id gets a new one: 32 random hex digits (os.urandom,
    as the REST edge makes its own; a fifth of uuid4's cost)."""
    api_key: str | None = None
    request_id: str | None = None
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                api_key = token.strip()
        elif key == "x-api-key" and api_key is None:
            api_key = value.strip() or None
        elif key == "x-request-id" and _REQUEST_ID.match(value):
            request_id = value
    return CallContext(
        api_key=api_key,
        request_id=request_id or os.urandom(16).hex(),
        timeout=context.time_remaining(),
    )


class ChatServicer(chat_service_pb2_grpc.ChatServiceServicer):
    """Thin: metadata to CallContext, one message per batch, MeshError to status."""

    def __init__(self, api: ChatAPI) -> None:
        self._api = api
        # Handlers of chat calls still running, for stop() to wait on. Each handler adds
        # its task and discards it in a `finally` (inline: a context manager per call
        # costs more than the two set operations).
        self._running: set[asyncio.Task[Any] | None] = set()

    async def unwind(self, wait_s: float) -> bool:
        """Cancels the chat handlers grpc has not cancelled, then waits up to `wait_s` for
        all of them to finish unwinding. False if some are still running."""
        running = [t for t in self._running if t is not None and not t.done()]
        if not running:
            return True
        for task in running:
            if not task.cancelling():  # never cancel twice: that would cut a cleanup short
                task.cancel()
        _, pending = await asyncio.wait(running, timeout=wait_s)
        return not pending

    async def Chat(
        self, request: chat_service_pb2.ChatRequest, context: _Context
    ) -> chat_service_pb2.ChatResponse:
        ctx = call_context(context)
        task = asyncio.current_task()
        self._running.add(task)
        try:
            return await self._api.chat(request.input, ctx)
        except MeshError as exc:
            await _abort(context, exc)
        except Exception:
            await _abort_internal(context, ctx)
        finally:
            self._running.discard(task)
        raise AssertionError("unreachable: abort raises")

    async def ChatStream(  # type: ignore[override]  # writes via context, returns nothing
        self, request: chat_service_pb2.ChatStreamRequest, context: _Context
    ) -> None:
        ctx = call_context(context)
        await context.send_initial_metadata((("x-request-id", ctx.request_id or ""),))
        # context.write (not yield): a cancelled call then interrupts this coroutine
        # wherever it waits, and the aclosing blocks close the stream down to the backend.
        task = asyncio.current_task()
        self._running.add(task)
        try:
            # One message per batch: events that were ready together (one upstream read)
            # travel together, and the first output is never held back.
            batches = self._api.chat_batches(request.input, ctx)
            async with contextlib.aclosing(batches):  # type: ignore[type-var]
                async for batch in batches:
                    await context.write(chat_service_pb2.ChatStreamResponse(events=batch))
        except MeshError as exc:
            await _abort(context, exc)
        except Exception:
            await _abort_internal(context, ctx)
        finally:
            self._running.discard(task)

    async def ListModels(
        self, request: chat_service_pb2.ListModelsRequest, context: _Context
    ) -> chat_service_pb2.ListModelsResponse:
        ctx = call_context(context)
        try:
            return await self._api.list_models(ctx)
        except MeshError as exc:
            await _abort(context, exc)
        except Exception:
            await _abort_internal(context, ctx)
        raise AssertionError("unreachable: abort raises")


async def _abort(context: _Context, error: MeshError) -> None:
    """Ends the call with the error's status and its google.rpc details."""
    status = error.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _abort_internal(context: _Context, ctx: CallContext) -> None:
    log.exception("request %s failed unexpectedly", ctx.request_id)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {ctx.request_id})")


class Service(Protocol):
    """Another gRPC service on the router's port (tenancy's UsageService and AdminService)."""

    @property
    def service_name(self) -> str: ...

    def add_to(self, server: grpc.aio.Server) -> None: ...


class RouterServer:
    """A started grpc.aio server: ChatService, grpc.health.v1 and reflection.

    `stop(drain_s)` marks health NOT_SERVING, refuses new calls, lets running streams
    finish for up to `drain_s`, then cancels them (which closes their upstream calls), and
    returns once their handlers have unwound (bounded by UNWIND_S).
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health: health_aio.HealthServicer,
        servicer: ChatServicer | None = None,
    ):
        self.server = server
        self.port = port
        self.health = health
        self.servicer = servicer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self, drain_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace=drain_s)
        # grpc returns once it has cancelled the calls left, not once their handlers have
        # unwound: wait for that, so what runs next (closing the backends, exiting) does
        # not cut short the closing of upstream calls and the recording of their usage.
        if self.servicer is not None and not await self.servicer.unwind(UNWIND_S):
            log.warning("stop: some calls were still unwinding after %.1fs", UNWIND_S)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def start_router_server(
    api: ChatAPI,
    listen: str,
    *,
    max_request_bytes: int = 4 * 1024 * 1024,
    tls: ServerTLS | None = None,
    services: Sequence[Service] = (),
) -> RouterServer:
    """Serve `api` on `listen` ("127.0.0.1:0" picks a free port, see `.port`); over TLS
    when `tls` is given (mutual TLS when it names a client CA). `services` are served
    beside ChatService on the same port."""
    server = grpc.aio.server(
        options=server_options(("grpc.max_receive_message_length", max_request_bytes))
    )
    servicer = ChatServicer(api)
    chat_service_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)
    health_servicer = ReadinessHealthServicer(api, SERVICE_NAME)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in services:
        service.add_to(server)
    names = (SERVICE_NAME, *(s.service_name for s in services), health.SERVICE_NAME)
    reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
    port = ServerSecurity.tls_only(tls).add_port(server, listen)
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    await health_servicer.set(SERVICE_NAME, serving)
    return RouterServer(server, port, health_servicer, servicer)
