"""ConnectionGate: the mesh's own queue in front of a provider's pool."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from adapters.connection_gate import ConnectionGate
from adapters.deadline import NO_DEADLINE, Deadline
from imesh.errors import MeshError, Reason, Verdict, classify


async def test_calls_within_the_limit_pass_at_once() -> None:
    gate = ConnectionGate(provider="p", limit=2, wait_s=1.0)
    await gate.acquire(NO_DEADLINE)
    await gate.acquire(NO_DEADLINE)
    assert gate.in_flight == 2
    gate.release()
    gate.release()
    assert gate.in_flight == 0


async def test_a_wait_past_the_pool_timeout_is_overloaded_with_retry_info_and_no_verdict() -> None:
    gate = ConnectionGate(provider="p", limit=1, wait_s=0.05)
    await gate.acquire(NO_DEADLINE)
    with pytest.raises(MeshError) as caught:
        await gate.acquire(NO_DEADLINE)
    err = caught.value
    assert err.reason is Reason.OVERLOADED
    assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.retry_after is not None
    assert classify(err).verdict is Verdict.NONE
    assert gate.in_flight == 1
    assert gate.waiting == 0


async def test_a_waiter_gets_the_slot_a_call_releases() -> None:
    gate = ConnectionGate(provider="p", limit=1, wait_s=1.0)
    await gate.acquire(NO_DEADLINE)
    waiter = asyncio.create_task(gate.acquire(NO_DEADLINE))
    await asyncio.sleep(0.01)
    assert gate.waiting == 1
    gate.release()
    await asyncio.wait_for(waiter, 1.0)
    assert gate.in_flight == 1


async def test_the_deadline_bounds_the_wait_too() -> None:
    gate = ConnectionGate(provider="p", limit=1, wait_s=30.0)
    await gate.acquire(NO_DEADLINE)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(MeshError):
        await gate.acquire(Deadline.after(0.05))
    assert loop.time() - started < 5.0


async def test_a_cancelled_waiter_takes_no_slot() -> None:
    gate = ConnectionGate(provider="p", limit=1, wait_s=5.0)
    await gate.acquire(NO_DEADLINE)
    waiter = asyncio.create_task(gate.acquire(NO_DEADLINE))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.release()
    assert gate.in_flight == 0
    await asyncio.wait_for(gate.acquire(NO_DEADLINE), 0.5)
