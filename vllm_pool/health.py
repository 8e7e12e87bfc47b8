"""Per-replica health as one router sees it: a small circuit breaker with passive
ejection (failures in a row eject the replica; after the ejection one probe decides)."""

from __future__ import annotations

import time
from collections.abc import Callable


class ReplicaHealth:
    """Closed while calls succeed. `eject_after` failures in a row eject the replica for
    `eject_s`, doubled on each ejection in a row up to `max_eject_s`. When it ends, one
    call is let through (half-open): success closes, failure ejects again.

    Called on the event loop only; every admitted call ends in exactly one of
    `succeeded()`, `failed()` or `released()` (no verdict: cancelled, caller's fault).
    """

    def __init__(
        self,
        *,
        eject_after: int,
        eject_s: float,
        max_eject_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._eject_after = eject_after
        self._eject_s = eject_s
        self._max_eject_s = max_eject_s
        self._clock = clock
        self._failures = 0
        self._ejections = 0
        self._ejected_until = 0.0
        self._probing = False

    @property
    def ejected(self) -> bool:
        return self._ejections > 0 and (self._probing or self._clock() < self._ejected_until)

    def available(self) -> bool:
        """Whether a call may go to this replica now (not ejected, or its probe is free)."""
        return not self.ejected

    def admit(self) -> None:
        if self._ejections and not self._probing:
            self._probing = True  # the one probe after an ejection

    def succeeded(self) -> None:
        self._failures = 0
        self._ejections = 0
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._eject_after:
            self._ejections += 1
            delay = self._eject_s * 2 ** (self._ejections - 1)
            self._ejected_until = self._clock() + min(delay, self._max_eject_s)
            self._failures = 0
        self._probing = False

    def released(self) -> None:
        self._probing = False
