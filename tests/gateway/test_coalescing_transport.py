"""The edge's transport sends a response's head with its first body write (one segment)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.http_limits import CoalescingTransport


class _Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_head_and_body_of_one_step_leave_as_one_write() -> None:
    inner = _Recorder()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(HEAD)
    transport.write(b"{}")
    assert inner.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)
    assert inner.writes == [HEAD + b"{}"]


async def test_a_head_alone_leaves_at_the_end_of_the_loop_iteration() -> None:
    inner = _Recorder()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(HEAD)
    assert inner.writes == []
    await asyncio.sleep(0)
    assert inner.writes == [HEAD]
    transport.write(b"data: x\n\n")  # later body writes go straight through
    assert inner.writes == [HEAD, b"data: x\n\n"]


async def test_close_sends_a_held_head_first() -> None:
    inner = _Recorder()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(HEAD)
    transport.close()
    assert inner.writes == [HEAD]
    assert inner.closed
