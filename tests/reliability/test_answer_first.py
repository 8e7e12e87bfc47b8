"""The answer leaves before the bookkeeping: a served request's final batch (usage and
finish) reaches the caller first, then the router reads the winner to its end, records
and settles it, exactly once, also when the caller goes away or the router closes."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from imesh.api import CallContext
from imesh.v1 import events_pb2
from router.admission import Ticket
from router.recorder import Outcome, RequestOutcome
from router.scope import RequestScope
from router.service import ChatRouter
from tests.reliability.mesh_fakes import (
    DEPLOYMENTS,
    RecordCollector,
    Script,
    ScriptedBackend,
    mesh_config,
    user_input,
)


class CountingAdmitter:
    """Admits everyone; counts how each ticket ended."""

    def __init__(self, *, fail_settle: bool = False) -> None:
        self.settled: list[events_pb2.Usage] = []
        self.released = 0
        self.fail_settle = fail_settle

    async def admit(self, scope: RequestScope) -> Ticket:
        return _Ticket(self)


class _Ticket:
    def __init__(self, admitter: CountingAdmitter) -> None:
        self._admitter = admitter

    def settle(self, usage: events_pb2.Usage) -> None:
        self._admitter.settled.append(usage)
        if self._admitter.fail_settle:
            raise RuntimeError("the usage store is down")

    def release(self) -> None:
        self._admitter.released += 1


def router_with(
    script: Script, admitter: CountingAdmitter
) -> tuple[ChatRouter, RecordCollector, ScriptedBackend]:
    backend = ScriptedBackend(script)
    backends = {p: ScriptedBackend() for p in DEPLOYMENTS.values()}
    backends[DEPLOYMENTS["dep-a"]] = backend
    sink = RecordCollector()
    router = ChatRouter(
        mesh_config(), backends, sinks=[sink], admitters=[admitter], rng=random.Random(7)
    )
    return router, sink, backend


def assert_settled_once(
    router: ChatRouter, sink: RecordCollector, admitter: CountingAdmitter
) -> None:
    assert [r.outcome for r in sink.requests] == [RequestOutcome.SUCCESS]
    assert [r.outcome for r in sink.records] == [Outcome.SUCCESS]  # read to its end
    assert len(admitter.settled) == 1
    assert admitter.released == 0
    assert admitter.settled[0] == sink.requests[0].usage
    assert router.limiter.in_flight == 0
    assert router.stats["dep-a"].in_flight == 0


async def test_the_unary_answer_returns_before_the_request_is_recorded_or_settled() -> None:
    admitter = CountingAdmitter()
    router, sink, backend = router_with(Script(tokens=["a", "b"], close_delay=0.05), admitter)
    answer = await router.chat(user_input("dep-a"), CallContext())
    assert answer.usage.completion_tokens == 2
    assert answer.finish_reason == events_pb2.FINISH_REASON_STOP
    # Returned before the upstream closed, before any record or settle.
    assert not backend.calls[0].closed.is_set()
    assert (sink.records, sink.requests, admitter.settled) == ([], [], [])
    assert router.limiter.in_flight == 1
    await router.settled()
    assert backend.calls[0].closed.is_set()
    assert_settled_once(router, sink, admitter)


async def test_a_stream_ends_for_its_caller_before_the_request_is_recorded() -> None:
    admitter = CountingAdmitter()
    router, sink, _ = router_with(Script(tokens=["a", "b"]), admitter)
    seen: list[str] = []
    async for batch in router.chat_batches(user_input("dep-a"), CallContext()):
        seen.extend(e.WhichOneof("event") or "" for e in batch)
    assert seen[-2:] == ["usage", "finish"]
    assert (sink.requests, admitter.settled) == ([], [])
    await router.settled()
    assert_settled_once(router, sink, admitter)


async def test_a_caller_cancelled_right_after_the_answer_is_settled_once() -> None:
    admitter = CountingAdmitter()
    router, sink, _ = router_with(Script(tokens=["a"], close_delay=0.05), admitter)
    answered = asyncio.Event()

    async def caller() -> None:
        await router.chat(user_input("dep-a"), CallContext())
        answered.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(caller())
    await answered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await router.settled()
    assert_settled_once(router, sink, admitter)


async def test_closing_the_router_settles_every_answered_request_first() -> None:
    admitter = CountingAdmitter()
    router, sink, backend = router_with(Script(tokens=["a"], close_delay=0.05), admitter)
    for _ in range(3):
        await router.chat(user_input("dep-a"), CallContext())
    await router.aclose()
    assert len(sink.requests) == 3
    assert len(admitter.settled) == 3
    assert all(call.closed.is_set() for call in backend.calls)


async def test_a_closing_cancelled_before_it_ran_still_settles_and_records_once() -> None:
    # A loop shutting down cancels every task, the closer's too, maybe before its first step.
    admitter = CountingAdmitter()
    router, sink, _ = router_with(Script(tokens=["a"]), admitter)
    await router.chat(user_input("dep-a"), CallContext())
    me = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is not me:
            task.cancel()
    await router.settled()
    assert [r.outcome for r in sink.requests] == [RequestOutcome.SUCCESS]
    assert [r.outcome for r in sink.records] == [Outcome.CANCELLED]  # never read to its end
    assert len(admitter.settled) == 1
    assert admitter.released == 0
    assert router.limiter.in_flight == 0
    assert router.stats["dep-a"].in_flight == 0


async def test_a_failing_closing_is_logged_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    admitter = CountingAdmitter(fail_settle=True)
    router, sink, _ = router_with(Script(tokens=["a"]), admitter)
    await router.chat(user_input("dep-a"), CallContext())
    await router.settled()
    assert len(sink.requests) == 1
    assert len(admitter.settled) == 1
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == ["closing a request after its answer failed"]
    assert failures[0].exc_info is not None
    assert "the usage store is down" in str(failures[0].exc_info[1])
