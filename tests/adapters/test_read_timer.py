"""ReadTimer: one timer per call, armed only around reads, never bound to one task."""

from __future__ import annotations

import asyncio

import pytest

from adapters.read_timer import ReadTimer


def _in(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_a_read_past_the_timer_raises_timeout_error() -> None:
    timer = ReadTimer(_in(0.05))
    with pytest.raises(TimeoutError), timer:
        await asyncio.sleep(5)
    assert timer.expired


async def test_between_reads_the_timer_cancels_nothing_and_the_next_read_times_out() -> None:
    timer = ReadTimer(_in(0.02))
    await asyncio.sleep(0.05)  # the caller's own work, outside any read: not cancelled
    assert timer.expired
    with pytest.raises(TimeoutError), timer:
        await asyncio.sleep(5)


async def test_rescheduling_moves_the_one_timer() -> None:
    timer = ReadTimer(_in(0.03))
    timer.reschedule(_in(30))
    with timer:
        await asyncio.sleep(0.06)
    timer.reschedule(None)
    with timer:
        await asyncio.sleep(0.01)
    timer.cancel()


async def test_reads_may_come_from_different_tasks() -> None:
    # The router hands a stream from the attempt task to the request task: the timer
    # cancels whichever task is reading when it fires.
    timer = ReadTimer(_in(5))

    async def read(seconds: float) -> None:
        with timer:
            await asyncio.sleep(seconds)

    await asyncio.create_task(read(0.01))
    timer.reschedule(_in(0.05))
    with pytest.raises(TimeoutError):
        await asyncio.create_task(read(5))


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    timer = ReadTimer(_in(5))

    async def read() -> None:
        with timer:
            await asyncio.sleep(5)

    task = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    timer.cancel()
