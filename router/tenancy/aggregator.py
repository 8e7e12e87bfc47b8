"""The usage aggregator: reads the usage stream as a consumer group and rolls events up per
tenant x model x day, exactly once (idempotency keys; roll-up and ack in one script)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from typing import Any, cast

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from router.tenancy.redis_util import UNREACHABLE, lua
from router.tenancy.usage_event import UsageEvent

log = logging.getLogger(__name__)

GROUP = "imesh-aggregator"
# How often `run()` trims what every group has acknowledged, and the backlog (entries not
# yet delivered to the group) above which it warns: the aggregators are falling behind.
TRIM_EVERY_S = 10.0
BACKLOG_WARNING = 100_000


class UsageAggregator:
    """Lifecycle: build over a client it then owns, `run()` as a task until cancelled (or
    call `step()` by hand), `aclose()` at the end.
    Restartable: a new aggregator picks up what a crashed one read but never acknowledged
    (its own pending entries, and other consumers' entries idle for `claim_idle_s`).
    Several may run at once (one per router): the group gives each event to one of them.
    Its client's socket timeout must outlast `block_s` (a blocking read waits that long):
    give it a client of its own, not the request path's fail-fast one.
    The stream's only trimmer: `trim()` drops entries every group has acknowledged, never
    one unread or pending, so no event is lost to a cap (`backlog` says how far behind
    this group is).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        namespace: str,
        dedupe_ttl_s: int,
        consumer: str | None = None,
        batch: int = 256,
        block_s: float = 1.0,
        claim_idle_s: float = 30.0,
    ) -> None:
        self._redis = client
        self._namespace = namespace
        self._stream = namespace + "events"
        self._ttl = dedupe_ttl_s
        self.consumer = consumer or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._batch = batch
        self._block_ms = int(block_s * 1000)
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._rollup = client.register_script(lua("rollup.lua"))
        self._group_ready = False
        self.counted = 0
        self.backlog: int | None = None  # None: not measured yet (or Redis cannot say)

    async def step(self, *, block: bool = False) -> int:
        """Roll up one batch: this consumer's pending entries first, then entries idle at a
        crashed consumer, then new ones. Returns how many entries were processed."""
        await self._ensure_group()
        entries = await self._read("0")
        if not entries:
            entries = await self._claim()
        if not entries:
            entries = await self._read(">", block=block)
        if entries:
            await self._apply(entries)
        return len(entries)

    async def trim(self) -> int:
        """Drops the entries every consumer group of the stream has acknowledged; returns
        how many. Updates `backlog` (warned about above BACKLOG_WARNING)."""
        await self._ensure_group()
        groups: Any = await self._redis.xinfo_groups(self._stream)
        floor: tuple[int, int] | None = None
        for group in groups:
            pending: Any = await self._redis.xpending(self._stream, group["name"])
            if pending["pending"]:
                keep_from = _stream_id(pending["min"])  # the oldest unacknowledged
            else:
                ms, seq = _stream_id(group["last-delivered-id"])
                keep_from = (ms, seq + 1)  # everything delivered was acknowledged
            floor = keep_from if floor is None else min(floor, keep_from)
            if group["name"] in (GROUP, GROUP.encode()):
                lag = group.get("lag")
                self.backlog = lag if isinstance(lag, int) else None
        if self.backlog is not None and self.backlog > BACKLOG_WARNING:
            log.warning("usage aggregator: %d events not yet read", self.backlog)
        if floor is None:
            return 0
        return int(
            await self._redis.xtrim(self._stream, minid=f"{floor[0]}-{floor[1]}", approximate=False)
        )

    async def run(self) -> None:
        backoff = 0.1
        down = False
        trim_at = time.monotonic() + TRIM_EVERY_S
        while True:
            try:
                await self.step(block=True)
                if time.monotonic() >= trim_at:
                    trim_at = time.monotonic() + TRIM_EVERY_S
                    await self.trim()
            except UNREACHABLE as exc:
                if not down:  # once per outage, not once per retry
                    log.warning("usage aggregator: Redis unreachable (%s); retrying", exc)
                    down = True
                self._group_ready = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if down:
                log.warning("usage aggregator: Redis reachable again")
                down = False
            backoff = 0.1

    async def aclose(self) -> None:
        """Closes the client (the aggregator owns the one it was given)."""
        await self._redis.aclose()

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the stream's start: events written before any aggregator ran count too.
            await self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _read(
        self, start: str, *, block: bool = False
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply: Any = await self._redis.xreadgroup(  # RESP2: [[stream, entries]]
            GROUP,
            self.consumer,
            {self._stream: start},
            count=self._batch,
            block=self._block_ms if block else None,
        )
        if not reply:
            return []
        return cast(list[tuple[bytes, dict[bytes, bytes]]], reply[0][1])

    async def _claim(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = await self._redis.xautoclaim(
            self._stream, GROUP, self.consumer, self._claim_idle_ms, "0-0", count=self._batch
        )
        return cast(list[tuple[bytes, dict[bytes, bytes]]], reply[1])

    async def _apply(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        args: list[str | bytes | int] = [GROUP, self._ttl, self._namespace]
        unreadable: list[bytes] = []
        for entry_id, fields in entries:
            try:
                event = UsageEvent.from_fields(fields or {})  # a trimmed entry has none
            except (KeyError, ValueError):
                unreadable.append(entry_id)
                continue
            args += [
                entry_id,
                event.idempotency_key,
                event.tenant,
                event.day,
                event.model,
                event.prompt_tokens,
                event.completion_tokens,
                event.cached_tokens,
                event.cost_micros,
                int(event.failed),
                event.latency_ms,
            ]
        if unreadable:
            log.error("usage aggregator: %d unreadable entries acknowledged", len(unreadable))
            await self._redis.xack(self._stream, GROUP, *unreadable)
        if len(args) > 3:
            self.counted += int(await self._rollup(keys=[self._stream], args=args))


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
