"""Small helpers shared by the provider adapter tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from adapters.backend import Backend
from adapters.deadline import NO_DEADLINE, Deadline
from imesh.errors import MeshError
from imesh.v1 import adapter_service_pb2, chat_pb2, events_pb2

# Distinctive, so a leak anywhere is found by substring search.
SECRET_KEY = "sk-imesh-LEAKCANARY-7c1d9e2f4a6b8c0d4321"


def text_part(text: str) -> chat_pb2.ContentPart:
    return chat_pb2.ContentPart(text=text)


def message(role: int, text: str = "", **fields: Any) -> chat_pb2.Message:
    content = [text_part(text)] if text else []
    return chat_pb2.Message(role=role, content=content, **fields)  # type: ignore[arg-type]


def generate(
    *messages: chat_pb2.Message, model: str = "test-model", **fields: Any
) -> adapter_service_pb2.GenerateRequest:
    if not messages:
        messages = (message(chat_pb2.ROLE_USER, "Hello"),)
    chat = chat_pb2.ChatInput(model="alias", messages=list(messages), **fields)
    return adapter_service_pb2.GenerateRequest(input=chat, provider_model=model, deployment="d1")


async def collect(
    backend: Backend,
    request: adapter_service_pb2.GenerateRequest,
    deadline: Deadline = NO_DEADLINE,
) -> tuple[list[events_pb2.ChatEvent], MeshError | None]:
    """All events (batches flattened) until the end or the MeshError that ended the stream."""
    events, error = await collect_batches(backend, request, deadline)
    return [event for batch in events for event in batch], error


async def collect_batches(
    backend: Backend,
    request: adapter_service_pb2.GenerateRequest,
    deadline: Deadline = NO_DEADLINE,
) -> tuple[list[list[events_pb2.ChatEvent]], MeshError | None]:
    """All batches until the end or the MeshError that ended the stream."""
    batches: list[list[events_pb2.ChatEvent]] = []
    stream: AsyncIterator[list[events_pb2.ChatEvent]] = backend.chat(request, deadline)
    try:
        async for batch in stream:
            assert batch, "a backend never yields an empty batch"
            batches.append(batch)
    except MeshError as err:
        return batches, err
    return batches, None


def text_of(events: list[events_pb2.ChatEvent]) -> str:
    return "".join(e.content.text for e in events if e.WhichOneof("event") == "content")


def kinds(events: list[events_pb2.ChatEvent]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


def usages(events: list[events_pb2.ChatEvent]) -> list[events_pb2.Usage]:
    return [e.usage for e in events if e.WhichOneof("event") == "usage"]


def finish_of(events: list[events_pb2.ChatEvent]) -> int:
    finishes = [e.finish.reason for e in events if e.WhichOneof("event") == "finish"]
    assert len(finishes) == 1, finishes
    return finishes[0]


def tool_calls(events: list[events_pb2.ChatEvent]) -> dict[int, dict[str, str]]:
    """Tool-call deltas assembled by index, as a client would."""
    calls: dict[int, dict[str, str]] = {}
    for event in events:
        if event.WhichOneof("event") != "tool_call":
            continue
        piece = event.tool_call
        call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
        call["id"] = call["id"] or piece.id
        call["name"] = call["name"] or piece.name
        call["arguments"] += piece.arguments_delta
    return calls


def parsed_arguments(events: list[events_pb2.ChatEvent]) -> dict[int, Any]:
    return {i: json.loads(c["arguments"]) for i, c in tool_calls(events).items()}
