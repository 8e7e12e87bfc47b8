"""The edge's handlers: thin raw-ASGI handlers over a ChatAPI (in-process or gRPC).

Handlers parse, validate, call the router through ChatAPI and map failures through
gateway.errors; no routing logic lives here. They are raw ASGI callables (no Request /
Response objects per call), served by gateway.dispatch's route table with no middleware
stack, because this is the hot path of every external request.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import Receive, Scope, Send

from gateway.disconnect import watch_caller
from gateway.dispatch import EdgeApp, EdgeRoute
from gateway.errors import log_unexpected
from gateway.metrics import NO_OBSERVABILITY, EdgeObservability
from gateway.rate_limit import rate_limit_headers
from gateway.responses import Exchange, send_error, send_json
from gateway.settings import GatewaySettings
from gateway.sse import relay_stream
from gateway.translate_request import ChatCall, RequestLimits, parse_chat_body
from gateway.translate_response import completion_body, model_body, model_objects, models_body
from gateway.usage import USAGE_PATH, no_tenancy, usage_body, usage_request
from imesh.api import CallContext, ChatAPI, UsageAPI
from imesh.errors import MeshError, Reason
from imesh.v1 import chat_service_pb2

CHAT_PATH = "/v1/chat/completions"
MODEL_PREFIX = "/v1/models/"
_KNOWN_PATHS = frozenset({CHAT_PATH, "/v1/models", "/healthz", "/readyz", USAGE_PATH})
_OK_BODY = b'{"status":"ok"}'
# Bounds a readiness probe's wait on the router; probes must answer fast either way.
READY_TIMEOUT_S = 2.0
# Bodies larger than this are parsed on a worker thread: the loop then waits only while
# json.loads holds the GIL (bounded by gateway.max_json_values), not for the whole parse.
PARSE_INLINE_BYTES = 64 * 1024


class ClientGone(Exception):
    """The caller disconnected before its request body arrived."""


def create_app(
    api: ChatAPI,
    settings: GatewaySettings,
    *,
    owns_api: bool = False,
    observability: EdgeObservability = NO_OBSERVABILITY,
    usage: UsageAPI | None = None,
) -> EdgeApp:
    """The edge as an ASGI app. With `owns_api`, the app's shutdown closes `api`.
    `observability` adds metrics (and `GET /metrics`) and spans; off by default."""
    edge = _Edge(api, settings, usage)
    routes = {
        CHAT_PATH: EdgeRoute.post(edge.chat_completions),
        "/v1/models": EdgeRoute.get(edge.list_models),
        "/healthz": EdgeRoute.get(edge.healthz),
        "/readyz": EdgeRoute.get(edge.readyz),
        USAGE_PATH: EdgeRoute.get(edge.usage),
    }
    metrics_endpoint = observability.metrics_endpoint()
    if metrics_endpoint is not None:
        # Served whatever the caller's key looks like (scrapers send none).
        routes["/metrics"] = EdgeRoute.get(metrics_endpoint, checks_key=False)
    return EdgeApp(
        routes,
        {MODEL_PREFIX: EdgeRoute.get(edge.retrieve_model)},
        # Anything else gets an OpenAI-style 404/405 instead of a plain-text one.
        edge.unknown_route,
        metrics=observability.metrics,
        tracer=observability.tracer(),
        on_shutdown=api.aclose if owns_api else None,
    )


class _Edge:
    """The handlers; built once per app, sharing one ChatAPI (one channel per worker)."""

    def __init__(self, api: ChatAPI, settings: GatewaySettings, usage: UsageAPI | None) -> None:
        self._api = api
        self._usage = usage
        self._max_body = settings.max_body_bytes
        self._limits = RequestLimits(
            max_messages=settings.max_messages,
            max_content_parts=settings.max_content_parts,
            max_tools=settings.max_tools,
            max_json_values=settings.max_json_values,
        )
        self._created = int(time.time())

    async def chat_completions(
        self, ex: Exchange, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            call = await self._parse(await read_body(receive, ex, self._max_body))
        except ClientGone:
            return
        except MeshError as exc:
            await send_error(send, ex, exc)
            return
        ctx = CallContext(api_key=ex.api_key, request_id=ex.request_id)
        completion_id = "chatcmpl-" + ex.request_id
        model = call.input.model
        created = int(time.time())
        if call.stream:
            batches = self._api.chat_batches(call.input, ctx)
            args = (completion_id, model, created, call.include_usage)
            await relay_stream(batches, args, ex, scope, receive, send)
            return

        watch = watch_caller(scope, receive)
        waited = time.perf_counter()
        try:
            response = await self._api.chat(call.input, ctx)
        except asyncio.CancelledError:
            if watch.absorb_cancel():
                return  # the caller left; cancelling the call cancelled the upstream
            raise
        except Exception as exc:
            ex.waited_s += time.perf_counter() - waited
            watch.stop()
            log_unexpected(exc)
            await send_error(send, ex, exc)
            return
        finally:
            watch.stop()
        ex.waited_s += time.perf_counter() - waited
        body = completion_body(response, completion_id, model, created)
        await send_json(send, ex, 200, body, rate_limit_headers(response.rate_limit))

    async def _parse(self, body: bytes) -> ChatCall:
        if len(body) <= PARSE_INLINE_BYTES:
            return parse_chat_body(body, self._limits)
        return await asyncio.to_thread(parse_chat_body, body, self._limits)

    async def list_models(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        models = await self._models(ex, send)
        if models is not None:
            await send_json(send, ex, 200, models_body(models, self._created))

    async def retrieve_model(
        self, ex: Exchange, scope: Scope, receive: Receive, send: Send
    ) -> None:
        wanted = scope["path"][len(MODEL_PREFIX) :]
        models = await self._models(ex, send)
        if models is None:
            return
        for model in model_objects(models, self._created):
            if model["id"] == wanted:
                await send_json(send, ex, 200, model_body(model))
                return
        await send_error(send, ex, model_not_found(wanted))

    async def healthz(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, ex, 200, _OK_BODY)

    async def readyz(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        """Ready when the router answers and at least one deployment's breaker is closed.
        Probes carry no key, so this asks the router's keyless readiness, not ListModels."""
        try:
            ready = await asyncio.wait_for(self._api.ready(), READY_TIMEOUT_S)
        except TimeoutError:
            ready = False
        if ready:
            await send_json(send, ex, 200, _OK_BODY)
        else:
            body = _unready("router unreachable or no deployment has a closed breaker")
            await send_json(send, ex, 503, body)

    async def usage(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        """The caller's tenant's usage (imesh.v1.UsageService), as JSON."""
        try:
            if self._usage is None:
                raise no_tenancy()
            request = usage_request(scope["query_string"])
            ctx = CallContext(api_key=ex.api_key, request_id=ex.request_id)
            response = await self._usage.get_usage(request, ctx)
        except Exception as exc:
            log_unexpected(exc)
            await send_error(send, ex, exc)
            return
        await send_json(send, ex, 200, usage_body(response))

    async def unknown_route(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path in _KNOWN_PATHS or path.startswith(MODEL_PREFIX):
            body = b'{"error":{"message":"method not allowed","type":"invalid_request_error",'
            body += b'"param":null,"code":"method_not_allowed"}}'
            await send_json(send, ex, 405, body)
            return
        err = MeshError.of(Reason.UNKNOWN_URL, f"Unknown request URL: {scope['method']} {path}")
        await send_error(send, ex, err)

    async def _models(self, ex: Exchange, send: Send) -> chat_service_pb2.ListModelsResponse | None:
        ctx = CallContext(api_key=ex.api_key, request_id=ex.request_id)
        waited = time.perf_counter()
        try:
            models = await self._api.list_models(ctx)
        except Exception as exc:
            ex.waited_s += time.perf_counter() - waited
            log_unexpected(exc)
            await send_error(send, ex, exc)
            return None
        ex.waited_s += time.perf_counter() - waited
        return models


async def read_body(receive: Receive, ex: Exchange, limit: int) -> bytes:
    """The whole request body, refusing more than `limit` bytes before reading (declared
    length) and while reading (chunked or lying clients). Time spent waiting for the
    caller's bytes is not counted as edge overhead."""
    declared = ex.content_length
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = b""
    parts: list[bytes] | None = None
    size = 0
    while True:
        waited = time.perf_counter()
        message = await receive()
        ex.waited_s += time.perf_counter() - waited
        if message["type"] != "http.request":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if not body:
            body = chunk
        else:
            if parts is None:
                parts = [body]
            parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts) if parts is not None else body


def too_large(limit: int) -> MeshError:
    return MeshError.of(
        Reason.REQUEST_TOO_LARGE, f"the request body exceeds the limit of {limit} bytes"
    )


def model_not_found(model: str) -> MeshError:
    return MeshError.of(
        Reason.MODEL_NOT_FOUND,
        f"The model '{model}' does not exist or you do not have access to it.",
    )


def _unready(reason: str) -> bytes:
    return json.dumps({"status": "unavailable", "reason": reason}).encode()
