"""The bare gRPC hop: a grpc.aio `imesh.v1.ChatService` whose every call is one direct
upstream call (aiohttp, orjson), with no routing, accounting or error model.

It is the floor for the mesh's gRPC path: the same client (`imesh.Client`), the same
contract, one hop and one upstream call. Everything one upstream read delivered becomes one
stream message. `python -m bench.grpc_relay --listen 127.0.0.1:0 --upstream URL --model M`
prints `grpc relay on HOST:PORT` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import grpc
import orjson
import uvloop

from bench.upstream import parse_listen
from imesh.v1 import chat_pb2, chat_service_pb2, chat_service_pb2_grpc, events_pb2

READY_PREFIX = "grpc relay on "
_FINISH: dict[str, events_pb2.FinishReason.ValueType] = {
    "stop": events_pb2.FINISH_REASON_STOP,
    "length": events_pb2.FINISH_REASON_LENGTH,
    "tool_calls": events_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": events_pb2.FINISH_REASON_CONTENT_FILTER,
}
_ROLES = {chat_pb2.ROLE_SYSTEM: "system", chat_pb2.ROLE_ASSISTANT: "assistant"}


def upstream_body(request: chat_pb2.ChatInput, model: str, stream: bool) -> bytes:
    """The OpenAI request for `request` (text messages and max_tokens only)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {
                "role": _ROLES.get(m.role, "user"),
                "content": "".join(part.text for part in m.content),
            }
            for m in request.messages
        ],
    }
    if request.HasField("max_tokens"):
        body["max_tokens"] = request.max_tokens
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def _usage(usage: dict[str, Any]) -> events_pb2.Usage:
    return events_pb2.Usage(
        prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"]
    )


def chunk_events(chunk: dict[str, Any]) -> list[events_pb2.ChatEvent]:
    """The events one `chat.completion.chunk` carries: content, finish, usage."""
    events = []
    for choice in chunk.get("choices") or ():
        if text := choice["delta"].get("content"):
            events.append(events_pb2.ChatEvent(content=events_pb2.ContentDelta(text=text)))
        if reason := choice.get("finish_reason"):
            finish = events_pb2.Finish(
                reason=_FINISH.get(reason, events_pb2.FINISH_REASON_UNSPECIFIED)
            )
            events.append(events_pb2.ChatEvent(finish=finish))
    if usage := chunk.get("usage"):
        events.append(events_pb2.ChatEvent(usage=_usage(usage)))
    return events


def read_events(buffer: bytes) -> tuple[list[events_pb2.ChatEvent], bytes]:
    """The events of the complete SSE events in `buffer`, and the incomplete rest."""
    *frames, rest = buffer.split(b"\n\n")
    events = []
    for frame in frames:
        if frame.startswith(b"data: ") and frame[6:] != b"[DONE]":
            events.extend(chunk_events(orjson.loads(frame[6:])))
    return events, rest


class BareChatService(chat_service_pb2_grpc.ChatServiceServicer):
    """Lifecycle: built on the serving loop, `aclose()` after the server stopped."""

    def __init__(self, upstream_url: str, model: str) -> None:
        self._url = upstream_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def Chat(
        self, request: chat_service_pb2.ChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_service_pb2.ChatResponse:
        body = upstream_body(request.input, self._model, stream=False)
        async with self._session.post(self._url, data=body) as upstream:
            answer = orjson.loads(await upstream.read())
        if upstream.status != 200:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream {upstream.status}")
        choice = answer["choices"][0]
        message = chat_pb2.Message(
            role=chat_pb2.ROLE_ASSISTANT,
            content=[chat_pb2.ContentPart(text=choice["message"]["content"])],
        )
        return chat_service_pb2.ChatResponse(
            model=request.input.model,
            provider_model=answer["model"],
            message=message,
            finish_reason=_FINISH.get(
                choice["finish_reason"], events_pb2.FINISH_REASON_UNSPECIFIED
            ),
            usage=_usage(answer["usage"]),
        )

    async def ChatStream(
        self,
        request: chat_service_pb2.ChatStreamRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[chat_service_pb2.ChatStreamResponse]:
        body = upstream_body(request.input, self._model, stream=True)
        async with self._session.post(self._url, data=body) as upstream:
            if upstream.status != 200:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream {upstream.status}")
            start = events_pb2.StreamStart(model=request.input.model, provider_model=self._model)
            pending = [events_pb2.ChatEvent(start=start)]
            rest = b""
            async for chunk in upstream.content.iter_any():
                events, rest = read_events(rest + chunk)
                pending.extend(events)
                if pending:
                    yield chat_service_pb2.ChatStreamResponse(events=pending)
                    pending = []

    async def ListModels(
        self,
        request: chat_service_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> chat_service_pb2.ListModelsResponse:
        return chat_service_pb2.ListModelsResponse()

    async def aclose(self) -> None:
        await self._session.close()


async def serve(listen: str, upstream_url: str, model: str) -> None:
    host, port = parse_listen(listen)
    server = grpc.aio.server()
    service = BareChatService(upstream_url, model)
    chat_service_pb2_grpc.add_ChatServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{READY_PREFIX}{host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)
        await service.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the bare gRPC hop (bench floor)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://h:p/v1")
    parser.add_argument("--model", required=True, help="the upstream's model name")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.listen, args.upstream, args.model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
