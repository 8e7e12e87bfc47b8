"""Without hedging nothing races: each attempt opens in the request's own task (no task,
queue or future per attempt), retries and fallbacks follow in turn, and a cancelled
caller still closes the upstream and records the attempt once. Hedged plans race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any

from adapters.backend import Batch
from adapters.deadline import Deadline
from imesh.api import CallContext
from imesh.v1 import adapter_service_pb2
from router.recorder import AttemptKind, Outcome
from router.service import ChatRouter
from tests.reliability.mesh_fakes import (
    DEPLOYMENTS,
    RecordCollector,
    Script,
    ScriptedBackend,
    collect,
    make_mesh,
    mesh_config,
    text_of,
    unavailable,
    user_input,
)


class TaskSpy(ScriptedBackend):
    """Notes the task each call's stream is opened and read in."""

    def __init__(self, *scripts: Script) -> None:
        super().__init__(*scripts)
        self.tasks: list[asyncio.Task[Any] | None] = []

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        self.tasks.append(asyncio.current_task())
        async for batch in super().chat(request, deadline):
            yield batch


def count_tasks(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Records the coroutine name of every task created from now on."""
    created: list[str] = []

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any]
    ) -> asyncio.Task[Any]:
        created.append(getattr(coro, "__qualname__", "?"))
        return asyncio.Task(coro, loop=loop)

    loop.set_task_factory(factory)
    return created


async def test_an_unhedged_attempt_opens_in_the_request_task_with_no_task_of_its_own() -> None:
    spy = TaskSpy(Script(tokens=["a", "b"]))
    backends = {p: ScriptedBackend() for p in DEPLOYMENTS.values()}
    backends[DEPLOYMENTS["dep-a"]] = spy
    sink = RecordCollector()
    router = ChatRouter(mesh_config(), backends, sinks=[sink])
    loop = asyncio.get_running_loop()
    created = count_tasks(loop)
    try:
        answer = await router.chat(user_input("dep-a"), CallContext())
        request_tasks = list(created)
        await router.settled()
    finally:
        loop.set_task_factory(None)
    assert answer.message.content[0].text == "ab"
    assert spy.tasks == [asyncio.current_task()]
    assert request_tasks == ["Closer.defer.<locals>.run"]  # only the closing, after the answer
    [record] = sink.records
    assert (record.outcome, record.won) == (Outcome.SUCCESS, True)


async def test_a_hedged_plan_still_races_attempts_in_their_own_tasks() -> None:
    mesh = make_mesh(
        {"dep-a": [Script(tokens=["a"])]},
        aliases={
            "h": {
                "candidates": ["dep-a", "dep-b"],
                "policy": "priority",
                "hedging": {"enabled": True, "delay_ms": 5000},
            }
        },
    )
    loop = asyncio.get_running_loop()
    created = count_tasks(loop)
    try:
        events, error = await collect(mesh, user_input("h"))
    finally:
        loop.set_task_factory(None)
    assert error is None
    assert text_of(events) == "a"
    assert "Attempt._race" in created


async def test_unhedged_retries_and_fallbacks_run_in_turn_in_the_request_task() -> None:
    mesh = make_mesh(
        {
            "dep-a": [Script(fail_at=0, error=unavailable()), Script(tokens=["ok"])],
            "dep-b": [Script(fail_at=0, error=unavailable())],
        },
        aliases={
            "m": {
                "candidates": ["dep-a", "dep-b"],
                "policy": "priority",
                "retry": {"max_attempts": 3, "backoff_base_ms": 0},
            }
        },
    )
    me = asyncio.current_task()
    events, error = await collect(mesh, user_input("m"))
    assert error is None
    assert text_of(events) == "ok"
    kinds = [(r.deployment, r.kind, r.outcome) for r in mesh.sink.records]
    assert kinds == [
        ("dep-a", AttemptKind.PRIMARY, Outcome.FAILURE),
        ("dep-b", AttemptKind.FALLBACK, Outcome.FAILURE),
        ("dep-a", AttemptKind.RETRY, Outcome.SUCCESS),
    ]
    assert [t for t in asyncio.all_tasks() if t is not me] == []


async def test_a_caller_cancelled_while_an_unhedged_attempt_opens_closes_it_once() -> None:
    mesh = make_mesh({"dep-a": [Script(tokens=["late"], ttft=5.0)]})

    async def caller() -> None:
        await mesh.router.chat(user_input("dep-a"), CallContext())

    task = asyncio.create_task(caller())
    await asyncio.sleep(0.05)  # the call is open, its first token 5 s away
    assert len(mesh.calls()) == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await mesh.router.settled()
    [call] = mesh.calls()
    assert call.cancelled
    assert call.closed.is_set()
    [record] = mesh.sink.records
    assert record.outcome is Outcome.CANCELLED
    assert mesh.router.stats["dep-a"].in_flight == 0
    assert mesh.router.limiter.in_flight == 0
    [request] = mesh.sink.requests
    assert request.attempts == 1
