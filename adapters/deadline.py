"""Deadline: when a call must end, as one `time.monotonic()` instant.

The mesh keeps every deadline on one clock, `time.monotonic()`. asyncio timers run on the
loop's clock, which may differ; `loop_at()` is the one place that converts between them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute `time.monotonic()` instant, or none (`at is None`: unbounded).

    Immutable; derive a tighter one with `earliest()`.
    """

    at: float | None = None

    @classmethod
    def never(cls) -> Deadline:
        return _NEVER

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """`seconds` from now (None: unbounded)."""
        return _NEVER if seconds is None else cls(time.monotonic() + seconds)

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None when unbounded."""
        if self.at is None:
            return None
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def earliest(self, other: float | None) -> Deadline:
        """This deadline, or the `time.monotonic()` instant `other` when it is sooner."""
        if other is None or (self.at is not None and self.at <= other):
            return self
        return Deadline(other)

    def loop_at(self, loop: asyncio.AbstractEventLoop | None = None) -> float | None:
        """The instant on the loop's clock, for `asyncio.timeout_at` / `loop.call_at`."""
        if self.at is None:
            return None
        loop = loop or asyncio.get_running_loop()
        return loop.time() + (self.at - time.monotonic())


_NEVER = Deadline(None)
