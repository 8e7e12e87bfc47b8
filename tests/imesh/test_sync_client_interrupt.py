"""SyncClient under Ctrl-C: a blocked stream read raises KeyboardInterrupt and the call ends.

The router runs on its own thread and loop, so SIGINT can reach the test's main thread
while it is blocked reading a stream that will never produce another event.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator

import pytest

import imesh
from adapters.config import SimulatedConfig
from adapters.simulated import SimulatedBackend
from imesh.v1 import chat_pb2
from router.config import parse_config
from router.server import start_router_server
from router.service import ChatRouter


class RouterThread:
    """A router over one stalling simulated deployment, served from a background thread."""

    def __init__(self) -> None:
        self.backend = SimulatedBackend(
            SimulatedConfig(kind="simulated", ttft_ms=0, stall_after_tokens=2)
        )
        self.address = ""
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),))

    async def _serve(self) -> None:
        config = parse_config(
            {
                "providers": {"stall": {"kind": "simulated"}},
                "deployments": [{"name": "stall-1", "provider": "stall", "model": "s"}],
            }
        )
        chat_router = ChatRouter(config, {"stall": self.backend})
        server = await start_router_server(chat_router, "127.0.0.1:0")
        self.address = f"127.0.0.1:{server.port}"
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)
        await chat_router.aclose()

    def __enter__(self) -> RouterThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def router_thread() -> Iterator[RouterThread]:
    with RouterThread() as running:
        yield running


def interrupt_main_after(delay_s: float) -> None:
    """SIGINT to the main thread, as a terminal's Ctrl-C delivers it."""
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(delay_s, signal.pthread_kill, (main, signal.SIGINT))
    timer.daemon = True
    timer.start()


def test_ctrl_c_during_a_blocked_stream_read_raises_keyboard_interrupt_and_cancels(
    router_thread: RouterThread,
) -> None:
    ask = chat_pb2.ChatInput(model="stall-1", messages=[imesh.user("hi")])
    with imesh.SyncClient(router_thread.address) as client:
        stream = client.chat_stream(ask)
        next(stream)  # the call is open and streaming; the next read blocks forever
        interrupt_main_after(0.2)
        with pytest.raises(KeyboardInterrupt):
            for _ in stream:
                pass
        interrupted_at = time.monotonic()
        # The upstream call was cancelled at once, not when the client closed.
        for _ in range(200):
            if router_thread.backend.calls_cancelled:
                break
            time.sleep(0.005)
        assert router_thread.backend.calls_cancelled == 1
        assert time.monotonic() - interrupted_at < 1.0
        # The client is still usable after the interrupt.
        assert client.list_models().deployments
