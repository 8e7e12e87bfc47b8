"""Deadline: when a call must be over, on one clock (`time.monotonic()`), with the one
conversion to the event loop's clock."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Deadline:
    """An absolute `time.monotonic()` instant (`math.inf`: no limit). Immutable; ordered,
    so `min(a, b)` is the earlier one."""

    at: float = math.inf

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """`seconds` from now; None is no limit."""
        return cls(math.inf if seconds is None else time.monotonic() + seconds)

    @property
    def bounded(self) -> bool:
        return not math.isinf(self.at)

    def remaining(self) -> float:
        """Seconds left (never below 0); `math.inf` without a limit."""
        return max(self.at - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def loop_at(self) -> float | None:
        """The same instant on the running loop's clock, for `asyncio.timeout_at` and
        `Timeout.reschedule` (None: no limit). The loop's clock may not be monotonic()."""
        if math.isinf(self.at):
            return None
        return asyncio.get_running_loop().time() + (self.at - time.monotonic())


NO_DEADLINE = Deadline()
