"""Admission: over the limit the router refuses at once (OVERLOADED with a RetryInfo), never
queues; every permit comes back whatever is cancelled when; tickets settle to real usage."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from imesh.api import CallContext
from imesh.errors import MeshError, Reason, classify
from imesh.v1 import events_pb2
from router.admission import ConcurrencyLimiter, Ticket, admit_all
from router.config import AdmissionConfig
from router.recorder import RequestOutcome
from router.scope import RequestScope
from tests.reliability.mesh_fakes import (
    Mesh,
    Script,
    collect,
    make_mesh,
    other_tasks,
    rate_limited,
    user_input,
)

SLOW = Script(tokens=["a"] * 50, gap=0.02)
DUO = {"duo": {"candidates": ["dep-a", "dep-b"], "policy": "priority"}}


class RecordingAdmitter:
    """Admits everyone; keeps what each ticket was settled or released with."""

    def __init__(self, refuse: bool = False, stall: bool = False) -> None:
        self.refuse = refuse
        self.stall = stall
        self.settled: list[events_pb2.Usage] = []
        self.released = 0
        self.held = 0

    async def admit(self, scope: RequestScope) -> Ticket:
        if self.stall:
            await asyncio.Event().wait()
        if self.refuse:
            raise MeshError.of(Reason.QUOTA_EXCEEDED, "over quota", retry_after=60)
        self.held += 1
        return _RecordingTicket(self)


class _RecordingTicket:
    def __init__(self, admitter: RecordingAdmitter) -> None:
        self._admitter = admitter

    def settle(self, usage: events_pb2.Usage) -> None:
        self._admitter.settled.append(usage)
        self._admitter.held -= 1

    def release(self) -> None:
        self._admitter.released += 1
        self._admitter.held -= 1


async def _open_stream(mesh: Mesh, model: str = "dep-a") -> asyncio.Task[None]:
    """A stream that has produced its first batch and keeps going in the background."""
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in mesh.router.chat_batches(user_input(model), CallContext()):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 1.0)
    return task


async def test_over_the_limit_a_request_is_refused_at_once_with_retry_info() -> None:
    mesh = make_mesh({"dep-a": [SLOW]}, router={"admission": {"max_in_flight": 2}})
    holding = [await _open_stream(mesh), await _open_stream(mesh)]
    started = time.monotonic()
    _, error = await collect(mesh, user_input("dep-a"))
    # Refused, not queued: the streams holding the slots run for about a second more.
    assert time.monotonic() - started < 0.5
    assert isinstance(error, MeshError)
    assert error.reason is Reason.OVERLOADED
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.retry_after == 1.0
    assert classify(error).verdict.value == "none"  # no verdict on any deployment
    assert len(mesh.calls()) == 2  # the refused request reached no backend
    for task in holding:
        await task
    await mesh.router.settled()  # slots come back as requests settle, after their answers
    assert mesh.router.limiter.in_flight == 0
    _, error = await collect(mesh, user_input("dep-a"))  # room again
    assert error is None


@pytest.mark.parametrize("stage", ["admit", "race", "relay", "close"])
async def test_every_permit_comes_back_whatever_is_cancelled_when(stage: str) -> None:
    stalled = RecordingAdmitter(stall=stage == "admit")
    scripts = {"dep-a": [Script(ttft=10.0)]} if stage == "race" else {"dep-a": [SLOW]}
    mesh = make_mesh(scripts, router={"admission": {"max_in_flight": 4}})
    mesh.router = type(mesh.router)(
        mesh.router._config,  # same config and backends, with a second admitter
        mesh.backends,
        sinks=[mesh.sink],
        admitters=[stalled],
    )

    async def consume() -> None:
        batches = mesh.router.chat_batches(user_input("dep-a"), CallContext())
        if stage == "close":
            await anext(batches)
            await batches.aclose()  # the caller walks away between batches
            return
        async for _ in batches:
            pass

    tasks = [asyncio.create_task(consume()) for _ in range(4)]
    await asyncio.sleep(0.05)  # admitted, racing (stalled upstream) or relaying
    assert mesh.router.limiter.in_flight == (0 if stage == "close" else 4)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert mesh.router.limiter.in_flight == 0
    assert stalled.held == 0
    assert mesh.router.stats["dep-a"].in_flight == 0
    assert mesh.router.breakers["dep-a"].available()
    assert other_tasks() == []
    assert len(mesh.sink.requests) == 4
    assert {r.outcome for r in mesh.sink.requests} == {RequestOutcome.CANCELLED}


async def test_a_later_refusal_releases_the_earlier_tickets() -> None:
    limiter = ConcurrencyLimiter(AdmissionConfig(max_in_flight=1))
    first, refusing = RecordingAdmitter(), RecordingAdmitter(refuse=True)
    scope = RequestScope("r", caller=None, request=user_input("x"), deadline=None)  # type: ignore[arg-type]
    with pytest.raises(MeshError) as caught:
        await admit_all([limiter, first, refusing], scope)
    assert caught.value.reason is Reason.QUOTA_EXCEEDED
    assert (limiter.in_flight, first.held, first.released) == (0, 0, 1)


async def test_the_ticket_settles_with_every_attempts_usage() -> None:
    admitter = RecordingAdmitter()
    mesh = make_mesh({"dep-a": [Script(fail_at=0, error=rate_limited(5))]}, aliases=DUO)
    mesh.router = type(mesh.router)(
        mesh.router._config, mesh.backends, sinks=[mesh.sink], admitters=[admitter]
    )
    _, error = await collect(mesh, user_input("duo"))
    assert error is None
    [usage] = admitter.settled
    assert usage == mesh.sink.requests[0].usage
    assert usage.cost_micros == sum(r.cost_micros for r in mesh.sink.records)
    assert admitter.held == 0


async def test_a_refused_request_releases_its_ticket_and_is_recorded() -> None:
    admitter = RecordingAdmitter()
    mesh = make_mesh({})
    mesh.router = type(mesh.router)(
        mesh.router._config, mesh.backends, sinks=[mesh.sink], admitters=[admitter]
    )
    _, error = await collect(mesh, user_input("no-such-model"))
    assert isinstance(error, MeshError)
    assert (admitter.released, admitter.held) == (1, 0)
    [record] = mesh.sink.requests
    assert (record.outcome, record.reason, record.attempts) == (
        RequestOutcome.FAILURE,
        Reason.MODEL_NOT_FOUND,
        0,
    )


async def test_a_deployment_at_its_limit_is_skipped_then_refused_as_overloaded() -> None:
    mesh = make_mesh(
        {"dep-a": [SLOW], "dep-b": [Script(tokens=["b"])]},
        aliases=DUO,
        router={"admission": {"per_deployment": {"dep-a": 1}}},
    )
    holding = await _open_stream(mesh, "dep-a")
    events, error = await collect(mesh, user_input("duo"))  # falls to dep-b at once
    assert error is None
    assert events[0].start.deployment == "dep-b"
    _, error = await collect(mesh, user_input("dep-a"))
    assert isinstance(error, MeshError)
    assert error.reason is Reason.OVERLOADED
    assert error.retry_after is not None
    assert mesh.router.breakers["dep-a"].available()  # the limit is no verdict
    await holding


async def test_every_request_gets_one_request_record() -> None:
    mesh = make_mesh({"dep-a": [Script(tokens=["Hel", "lo"])]})
    await collect(mesh, user_input("dep-a"), CallContext(request_id="ok"))
    await collect(mesh, user_input("nope"), CallContext(request_id="bad"))
    ok, bad = mesh.sink.requests
    assert (ok.request_id, ok.outcome, ok.deployment, ok.attempts) == (
        "ok",
        RequestOutcome.SUCCESS,
        "dep-a",
        1,
    )
    assert ok.usage.cost_micros == 14
    assert ok.ttft_s is not None
    assert 0 <= ok.overhead_s < ok.latency_s
    assert (bad.request_id, bad.reason) == ("bad", Reason.MODEL_NOT_FOUND)
