"""Reliability test kit: a scriptable fake Backend at the seam, a tiny mesh, a record sink.

A plain module rather than conftest.py: tests import these names, and importing a
conftest module is fragile. tests/router reuses it for its service and server tests.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from imesh.api import CallContext
from imesh.errors import MeshError, Reason
from imesh.v1 import adapter_service_pb2, chat_pb2, events_pb2
from router.config import MeshConfig, parse_config
from router.recorder import AttemptRecord, RequestRecord
from router.service import ChatRouter

PROVIDERS = ("p-a", "p-b", "p-c")
DEPLOYMENTS = {"dep-a": "p-a", "dep-b": "p-b", "dep-c": "p-c"}
# $1 / $2 per million tokens: 1 micro-dollar per prompt token, 2 per completion token.
PRICE = {"input": 1, "output": 2}


@dataclass
class Script:
    """What one backend call does. Step k (token k, a failure or a stall) is preceded by
    `ttft` (k == 0) or `gap`. Each token is its own batch (one upstream read); the tail,
    usage and finish come together in the last."""

    tokens: Sequence[str] = ("Hel", "lo")
    ttft: float = 0.0
    gap: float = 0.0
    fail_at: int | None = None  # raise `error` instead of token k (len(tokens): after all)
    error: MeshError | None = None
    stall_at: int | None = None  # wait forever instead of token k
    report_usage: bool = True
    finish: events_pb2.FinishReason.ValueType = events_pb2.FINISH_REASON_STOP
    tail: Sequence[events_pb2.ChatEvent] = ()  # yielded after the tokens (e.g. tool calls)
    close_delay: float = 0.0  # closing the upstream takes this long (a slow HTTP teardown)


@dataclass
class Call:
    """What the router did with one backend call, as the backend saw it."""

    deployment: str
    started_at: float
    tokens_sent: int = 0
    closed_at: float | None = None
    cancelled: bool = False
    completed: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class ScriptedBackend(Backend):
    """Plays `scripts[i]` for its i-th call (the last script repeats)."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts) or [Script()]
        self.calls: list[Call] = []
        self.deadlines: list[Deadline] = []

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        script = self.scripts[min(len(self.calls), len(self.scripts) - 1)]
        call = Call(request.deployment, time.monotonic())
        self.calls.append(call)
        self.deadlines.append(deadline)
        try:
            tokens = list(script.tokens)
            for k in range(len(tokens) + 1):
                if k < len(tokens) or k in (script.fail_at, script.stall_at):
                    await asyncio.sleep(script.ttft if k == 0 else script.gap)
                if k == script.fail_at:
                    if k > 0 and script.report_usage:
                        yield [_usage(k)]
                    assert script.error is not None
                    raise script.error
                if k == script.stall_at:
                    await asyncio.Event().wait()
                if k == len(tokens):
                    break
                yield [events_pb2.ChatEvent(content=events_pb2.ContentDelta(text=tokens[k]))]
                call.tokens_sent += 1
            last = list(script.tail)
            if script.report_usage:
                last.append(_usage(len(script.tokens)))
            last.append(events_pb2.ChatEvent(finish=events_pb2.Finish(reason=script.finish)))
            yield last
            call.completed = True
        except (asyncio.CancelledError, GeneratorExit):
            call.cancelled = True
            raise
        finally:
            if script.close_delay:
                await asyncio.sleep(script.close_delay)
            call.closed_at = time.monotonic()
            call.closed.set()


def _usage(completion_tokens: int) -> events_pb2.ChatEvent:
    return events_pb2.ChatEvent(
        usage=events_pb2.Usage(prompt_tokens=10, completion_tokens=completion_tokens)
    )


def unavailable(message: str = "upstream down") -> MeshError:
    return MeshError.of(Reason.UPSTREAM_UNAVAILABLE, message)


def rate_limited(retry_after: float) -> MeshError:
    return MeshError.of(Reason.UPSTREAM_RATE_LIMITED, "slow down", retry_after=retry_after)


def mesh_config(
    aliases: dict[str, Any] | None = None, router: dict[str, Any] | None = None
) -> MeshConfig:
    return parse_config(
        {
            "providers": {name: {"kind": "simulated"} for name in PROVIDERS},
            "deployments": [
                {"name": name, "provider": provider, "model": f"{name}-model", "price": PRICE}
                for name, provider in DEPLOYMENTS.items()
            ],
            "aliases": aliases or {},
            "router": router or {},
        }
    )


class MaxJitter(random.Random):
    """Backoff always takes the top of its jitter range, so waits are predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


class RecordCollector:
    def __init__(self) -> None:
        self.records: list[AttemptRecord] = []
        self.requests: list[RequestRecord] = []

    def record_attempt(self, record: AttemptRecord) -> None:
        self.records.append(record)

    def record_request(self, record: RequestRecord) -> None:
        self.requests.append(record)

    def by_deployment(self, name: str) -> list[AttemptRecord]:
        return [r for r in self.records if r.deployment == name]


@dataclass
class Mesh:
    router: ChatRouter
    backends: dict[str, ScriptedBackend]
    sink: RecordCollector

    def backend(self, deployment: str) -> ScriptedBackend:
        return self.backends[DEPLOYMENTS[deployment]]

    def calls(self) -> list[Call]:
        return sorted(
            (c for b in self.backends.values() for c in b.calls), key=lambda c: c.started_at
        )


def make_mesh(
    scripts: Mapping[str, Sequence[Script]],
    *,
    aliases: dict[str, Any] | None = None,
    router: dict[str, Any] | None = None,
    rng: random.Random | None = None,
) -> Mesh:
    """A router over dep-a/b/c whose backends play `scripts` (keyed by deployment)."""
    backends = {DEPLOYMENTS[d]: ScriptedBackend(*scripts.get(d, ())) for d in DEPLOYMENTS}
    sink = RecordCollector()
    chat_router = ChatRouter(
        mesh_config(aliases, router), backends, sinks=[sink], rng=rng or random.Random(7)
    )
    return Mesh(chat_router, backends, sink)


def user_input(model: str, text: str = "hi", **fields: Any) -> chat_pb2.ChatInput:
    return chat_pb2.ChatInput(
        model=model,
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=text)])
        ],
        **fields,
    )


async def collect(
    mesh: Mesh, request: chat_pb2.ChatInput, ctx: CallContext | None = None
) -> tuple[list[events_pb2.ChatEvent], MeshError | None]:
    """Every event of a stream, and the MeshError it raised (or None), once the router
    settled the request (a served request's records and settle follow its answer)."""
    events: list[events_pb2.ChatEvent] = []
    try:
        async for event in mesh.router.chat_stream(request, ctx or CallContext()):
            events.append(event)
    except MeshError as exc:
        return events, exc
    finally:
        await mesh.router.settled()
    return events, None


def kinds(events: Sequence[events_pb2.ChatEvent]) -> list[str]:
    return [e.WhichOneof("event") or "" for e in events]


def text_of(events: Sequence[events_pb2.ChatEvent]) -> str:
    return "".join(e.content.text for e in events if e.HasField("content"))


def other_tasks() -> list[asyncio.Task[Any]]:
    """Tasks still running besides the test's own: must be none once a stream is closed."""
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not current and not t.done()]
