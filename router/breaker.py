"""Per-deployment circuit breaker: closed -> open -> half-open."""

from __future__ import annotations

import collections
import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from imesh.v1 import chat_service_pb2
from router.config import BreakerConfig

# The sliding window is this many time buckets; its edge is exact to one bucket
# (window_s / WINDOW_BUCKETS), which keeps memory constant however busy the deployment is.
WINDOW_BUCKETS = 10
# retry_after() hint while half-open with every probe slot taken: the probes' outcome is
# unknown, so callers are told to come back soon rather than after a whole open period.
PROBE_BUSY_RETRY_S = 1.0
_NEVER = -(1 << 62)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def to_proto(self) -> chat_service_pb2.BreakerState.ValueType:
        return _PROTO_STATES[self]


_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN

_PROTO_STATES = {
    BreakerState.CLOSED: chat_service_pb2.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: chat_service_pb2.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: chat_service_pb2.BREAKER_STATE_HALF_OPEN,
}


@dataclass(frozen=True, slots=True)
class Permit:
    """One admitted call. `probe`: it holds one of the half-open probe slots. `generation`:
    how many times the breaker had opened when it was admitted; a verdict from an earlier
    generation is about a deployment the breaker has judged since, and is ignored."""

    probe: bool
    generation: int


class CircuitBreaker:
    """Admits or refuses calls to one deployment from the verdicts of earlier calls.

        Protocol for the caller: `try_acquire()` before an attempt; when it returns a Permit,
        end the attempt with exactly one of `record_success(permit)`, `record_failure(permit)`
        or `release(permit)` (no verdict: cancelled hedge loser, caller gone, or a 429 that
        `cool_down()` handled). Only a probe's permit frees a probe slot: a call admitted
        while closed that ends during half-open leaves the probes alone.

        CLOSED opens after `consecutive_failures` failures in a row, or when the failure rate
        over the sliding window reaches `failure_rate` with at least `min_requests` verdicts
        in it. OPEN refuses everything for `open_s`, then turns HALF_OPEN (lazily, on the
        next look). HALF_OPEN admits up to `half_open_probes` concurrent probes: a success
        closes (with a fresh window), a failure reopens. Verdicts that arrive while OPEN come
        from calls admitted before it opened and are ignored, as are verdicts from any call
    admitted before the latest opening.

        A cool-down (provider 429 with Retry-After) refuses calls until it ends in any state,
        without being a failure and without touching the counts.

        Not thread-safe: one event loop owns it.
    """

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._bucket_s = config.window_s / WINDOW_BUCKETS
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probes = 0
        self._generation = 0
        self._consecutive = 0
        self._cooling_until = -math.inf
        self._epochs = [_NEVER] * WINDOW_BUCKETS
        self._ok = [0] * WINDOW_BUCKETS
        self._failed = [0] * WINDOW_BUCKETS
        # The permit of every call admitted while closed in this generation (immutable,
        # so one is shared rather than one built per call).
        self._closed_permit = Permit(False, 0)
        # State changes so far, by (left, entered): metrics read it at scrape time.
        self.transitions: collections.Counter[tuple[BreakerState, BreakerState]] = (
            collections.Counter()
        )

    @property
    def config(self) -> BreakerConfig:
        return self._config

    @property
    def state(self) -> BreakerState:
        state = self._state
        if state is not _OPEN:  # only an open breaker changes state by itself (lazily)
            return state
        return self._refresh(self._clock())

    def available(self) -> bool:
        now = self._clock()
        if self._state is _CLOSED:
            return now >= self._cooling_until
        return self._admits(self._refresh(now), now)

    def try_acquire(self) -> Permit | None:
        now = self._clock()
        if self._state is _CLOSED:
            return self._closed_permit if now >= self._cooling_until else None
        state = self._refresh(now)
        if not self._admits(state, now):
            return None
        probe = state is BreakerState.HALF_OPEN
        if probe:
            self._probes += 1
        return Permit(probe, self._generation)

    def record_success(self, permit: Permit) -> None:
        now = self._clock()
        state = self._state
        if state is _OPEN:
            state = self._refresh(now)
        if permit.generation != self._generation:
            return
        if state is _HALF_OPEN:
            if permit.probe:
                self._close()
        elif state is _CLOSED:
            self._consecutive = 0
            self._count(now, failed=False)

    def record_failure(self, permit: Permit) -> None:
        now = self._clock()
        state = self._refresh(now)
        if permit.generation != self._generation:
            return
        if state is BreakerState.HALF_OPEN:
            if permit.probe:
                self._open(now)
        elif state is BreakerState.CLOSED:
            self._consecutive += 1
            self._count(now, failed=True)
            ok, failed = self._totals(now)
            total = ok + failed
            if self._consecutive >= self._config.consecutive_failures or (
                total >= self._config.min_requests and failed / total >= self._config.failure_rate
            ):
                self._open(now)

    def release(self, permit: Permit) -> None:
        if not permit.probe:  # only a probe's permit holds anything to give back
            return
        state = self._refresh(self._clock())
        if (
            permit.probe
            and permit.generation == self._generation
            and state is BreakerState.HALF_OPEN
            and self._probes > 0
        ):
            self._probes -= 1

    def cool_down(self, seconds: float) -> None:
        if seconds > 0:
            self._cooling_until = max(self._cooling_until, self._clock() + seconds)

    def cooling_for(self) -> float:
        """Seconds left of a rate-limit cool-down (0: none)."""
        return max(self._cooling_until - self._clock(), 0.0)

    def retry_after(self) -> float:
        now = self._clock()
        state = self._refresh(now)
        wait = max(self._cooling_until - now, 0.0)
        if state is BreakerState.OPEN:
            wait = max(wait, self._opened_at + self._config.open_s - now)
        elif state is BreakerState.HALF_OPEN and self._probes >= self._config.half_open_probes:
            wait = max(wait, min(PROBE_BUSY_RETRY_S, self._config.open_s))
        return wait

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state.value}, retry_after={self.retry_after():.3f})"

    def _refresh(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now >= self._opened_at + self._config.open_s:
            self._enter(BreakerState.HALF_OPEN)
            self._probes = 0
        return self._state

    def _admits(self, state: BreakerState, now: float) -> bool:
        if now < self._cooling_until or state is BreakerState.OPEN:
            return False
        return state is BreakerState.CLOSED or self._probes < self._config.half_open_probes

    def _enter(self, state: BreakerState) -> None:
        if state is not self._state:
            self.transitions[(self._state, state)] += 1
            self._state = state

    def _open(self, now: float) -> None:
        self._enter(BreakerState.OPEN)
        self._opened_at = now
        self._probes = 0
        self._generation += 1
        self._closed_permit = Permit(False, self._generation)

    def _close(self) -> None:
        self._enter(BreakerState.CLOSED)
        self._probes = 0
        self._consecutive = 0
        # Failures from before the outage must not count against the recovered deployment.
        self._epochs = [_NEVER] * WINDOW_BUCKETS
        self._ok = [0] * WINDOW_BUCKETS
        self._failed = [0] * WINDOW_BUCKETS

    def _count(self, now: float, *, failed: bool) -> None:
        """Add one verdict to the window."""
        epoch = math.floor(now / self._bucket_s)
        i = epoch % WINDOW_BUCKETS
        if self._epochs[i] != epoch:
            self._epochs[i] = epoch
            self._ok[i] = 0
            self._failed[i] = 0
        if failed:
            self._failed[i] += 1
        else:
            self._ok[i] += 1

    def _totals(self, now: float) -> tuple[int, int]:
        """The window's (successes, failures)."""
        oldest = math.floor(now / self._bucket_s) - WINDOW_BUCKETS
        ok = total_failed = 0
        for j in range(WINDOW_BUCKETS):
            if self._epochs[j] > oldest:
                ok += self._ok[j]
                total_failed += self._failed[j]
        return ok, total_failed
