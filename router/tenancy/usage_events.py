"""Usage events to a Redis Stream, never lost: an in-memory buffer, spilled to disk (off the
event loop) while Redis is unreachable, flushed (disk first) when it returns."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections import deque
from pathlib import Path
from typing import Protocol, TextIO

import redis.asyncio as aioredis

from router.tenancy.redis_util import UNREACHABLE
from router.tenancy.usage_event import UsageEvent

log = logging.getLogger(__name__)

BATCH = 500  # events per pipeline round trip


class UsageSink(Protocol):
    """Where usage events go.

    Lifecycle: `start()` once, `emit()` from the event loop (never blocks, never raises),
    `aclose()` at shutdown (a last flush; what cannot be sent stays on disk for the next
    start)."""

    def emit(self, event: UsageEvent) -> None: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class StreamUsageSink:
    """Sends events to a Redis Stream in batches from one background task.

    While Redis is unreachable, events wait in memory; past `buffer_events` the flusher
    task appends the buffer to `spill_path` (JSON lines, fsynced) from a worker thread,
    so a request's settle never writes to disk. When Redis answers again the spill file
    is sent first (read in batches, off the loop), then the buffer. A batch that failed
    half-way is sent again whole: the aggregator's idempotency keys drop the duplicates.

    Nothing here trims the stream: the aggregator trims only what its group has
    acknowledged (UsageAggregator.trim), so no event is dropped unread.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        stream: str,
        buffer_events: int,
        spill_path: Path,
        flush_interval_s: float,
    ) -> None:
        self._redis = client
        self._stream = stream
        self._limit = buffer_events
        self._spill = spill_path
        self._interval = flush_interval_s
        self._buffer: deque[UsageEvent] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unreachable = False
        self.sent = 0
        self.spilled = 0

    @property
    def pending(self) -> int:
        """Events not yet in the stream (memory and disk)."""
        return len(self._buffer) + _count_lines(self._spill) + _count_lines(self._sending)

    def emit(self, event: UsageEvent) -> None:
        self._buffer.append(event)
        if len(self._buffer) >= BATCH or len(self._buffer) > self._limit:
            self._wake.set()  # the flusher sends, or spills: never this caller

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-events-flush")

    async def flush(self) -> bool:
        """Send everything pending now; False when Redis is unreachable (kept for later)."""
        try:
            while self._has_spill():
                await self._send_spill()
            while self._buffer:
                batch = [self._buffer.popleft() for _ in range(min(BATCH, len(self._buffer)))]
                try:
                    await self._send(batch)
                except BaseException:
                    self._buffer.extendleft(reversed(batch))
                    raise
        except UNREACHABLE as exc:
            if not self._unreachable:
                log.warning("usage events: Redis unreachable (%s); buffering", exc)
                self._unreachable = True
            return False
        if self._unreachable:
            log.warning("usage events: Redis reachable again; buffered events sent")
            self._unreachable = False
        return True

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not await self.flush() and self._buffer:
            await self._spill_buffer()  # kept on disk for the next start

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if self._buffer or self._has_spill():
                try:
                    if not await self.flush() and len(self._buffer) > self._limit:
                        await self._spill_buffer()
                except Exception:  # never let the flusher die: events would pile up
                    log.exception("usage events: flush failed")

    async def _send(self, batch: list[UsageEvent]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in batch:
                pipe.xadd(self._stream, event.to_fields())  # type: ignore[arg-type]
            await pipe.execute()
        self.sent += len(batch)

    @property
    def _sending(self) -> Path:
        return self._spill.with_name(self._spill.name + ".sending")

    def _has_spill(self) -> bool:
        return self._spill.exists() or self._sending.exists()

    async def _send_spill(self) -> None:
        # Spills written while this one is being sent land in a new file, not lost.
        if not self._sending.exists():
            self._spill.rename(self._sending)
        with self._sending.open(encoding="utf-8") as spilled:
            while events := await asyncio.to_thread(_read_events, spilled, BATCH):
                await self._send(events)
        self._sending.unlink()

    async def _spill_buffer(self) -> None:
        events = list(self._buffer)
        self._buffer.clear()
        writing = asyncio.ensure_future(asyncio.to_thread(_append, self._spill, events))
        # A cancel (shutdown) neither stops the write nor skips its outcome: the events
        # end up on disk or back in memory, exactly once.
        try:
            await asyncio.wait([writing])
        except asyncio.CancelledError:
            await asyncio.wait([writing])
            raise
        finally:
            self._after_spill(writing, events)

    def _after_spill(self, writing: asyncio.Future[None], events: list[UsageEvent]) -> None:
        error = writing.exception()
        if error is None:
            self.spilled += len(events)
        else:  # a full or broken disk: keep them in memory, the next flush tries again
            self._buffer.extendleft(reversed(events))
            log.error("usage events: spilling to %s failed: %s", self._spill, error)


def _append(path: Path, events: list[UsageEvent]) -> None:
    """Appends events as JSON lines and fsyncs (in a worker thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.writelines(event.to_json() + "\n" for event in events)
        out.flush()
        os.fsync(out.fileno())


def _read_events(spilled: TextIO, count: int) -> list[UsageEvent]:
    """The next `count` events of a spill file (in a worker thread); damaged lines are
    skipped. Empty at the end of the file."""
    events: list[UsageEvent] = []
    while len(events) < count:
        line = spilled.readline()
        if not line:
            break
        try:
            events.append(UsageEvent.from_json(line))
        except (ValueError, KeyError):
            log.warning("usage events: skipping a damaged spilled line")
    return events


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


class SpillSlot:
    """A spill file this process holds alone: `usage-spill-N.jsonl` under an exclusive
    lock on `usage-spill-N.lock`, N the first free slot. Routers sharing a directory get
    different files; a restarted router takes a free slot, adopting what a stopped router
    left there. Lifecycle: `claim()` at start, `release()` at shutdown (or process exit)."""

    def __init__(self, path: Path, lock: int) -> None:
        self.path = path
        self._lock = lock

    @classmethod
    def claim(cls, directory: Path, slots: int = 64) -> SpillSlot:
        directory.mkdir(parents=True, exist_ok=True)
        for n in range(slots):
            fd = os.open(directory / f"usage-spill-{n}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return cls(directory / f"usage-spill-{n}.jsonl", fd)
        raise RuntimeError(f"all {slots} usage spill slots in {directory} are taken")

    def release(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)  # closing the descriptor drops the lock
            self._lock = -1
