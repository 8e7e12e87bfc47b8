"""CircuitBreaker against a plain reference model, over random call sequences (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from router.breaker import (
    PROBE_BUSY_RETRY_S,
    WINDOW_BUCKETS,
    BreakerState,
    CircuitBreaker,
    Permit,
)
from router.config import BreakerConfig


class FakeClock:
    def __init__(self) -> None:
        # Every step below is a binary fraction, so clock arithmetic is exact.
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ReferenceBreaker:
    """The breaker's rules written as plainly as possible: a full event log, no buckets
    ring, state recomputed from timestamps."""

    def __init__(self, config: BreakerConfig) -> None:
        self.c = config
        self.state = "closed"
        self.opened_at = 0.0
        self.probes = 0
        self.opened = 0  # times opened: a call admitted before the latest opening is stale
        self.streak = 0
        self.cooling_until = -math.inf
        self.log: list[tuple[float, bool]] = []  # (time, failed), since the last close

    def settle(self, now: float) -> str:
        if self.state == "open" and now - self.opened_at >= self.c.open_s:
            self.state = "half_open"
            self.probes = 0
        return self.state

    def admits(self, now: float) -> bool:
        state = self.settle(now)
        if now < self.cooling_until:
            return False
        if state == "closed":
            return True
        return state == "half_open" and self.probes < self.c.half_open_probes

    def acquire(self, now: float) -> tuple[bool, int] | None:
        """(probe, times opened) of the admitted call, or None."""
        if not self.admits(now):
            return None
        probe = self.state == "half_open"
        if probe:
            self.probes += 1
        return probe, self.opened

    def open(self, now: float) -> None:
        self.state, self.opened_at, self.probes = "open", now, 0
        self.opened += 1

    def in_window(self, now: float) -> list[bool]:
        bucket = self.c.window_s / WINDOW_BUCKETS
        newest = now // bucket
        return [failed for t, failed in self.log if t // bucket > newest - WINDOW_BUCKETS]

    def success(self, now: float, call: tuple[bool, int]) -> None:
        state = self.settle(now)
        probe, opened = call
        if opened != self.opened:
            return
        if state == "half_open" and probe:
            self.state, self.probes, self.streak, self.log = "closed", 0, 0, []
        elif state == "closed":
            self.streak = 0
            self.log.append((now, False))

    def failure(self, now: float, call: tuple[bool, int]) -> None:
        state = self.settle(now)
        probe, opened = call
        if opened != self.opened:
            return
        if state == "half_open" and probe:
            self.open(now)
        elif state == "closed":
            self.streak += 1
            self.log.append((now, True))
            window = self.in_window(now)
            rate_trips = (
                len(window) >= self.c.min_requests
                and sum(window) / len(window) >= self.c.failure_rate
            )
            if self.streak >= self.c.consecutive_failures or rate_trips:
                self.open(now)

    def release(self, now: float, call: tuple[bool, int]) -> None:
        probe, opened = call
        if probe and opened == self.opened and self.settle(now) == "half_open" and self.probes > 0:
            self.probes -= 1

    def retry_after(self, now: float) -> float:
        state = self.settle(now)
        waits = [0.0, self.cooling_until - now]
        if state == "open":
            waits.append(self.opened_at + self.c.open_s - now)
        if state == "half_open" and self.probes >= self.c.half_open_probes:
            waits.append(min(PROBE_BUSY_RETRY_S, self.c.open_s))
        return max(waits)


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        # Calls admitted and not yet ended (the breaker's permit, the model's): verdicts
        # are only given for these, in any order, as in use.
        self.outstanding: list[tuple[Permit, tuple[bool, int]]] = []

    @initialize(
        consecutive=st.integers(1, 4),
        rate=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
        min_requests=st.integers(1, 6),
        open_s=st.sampled_from([1.0, 2.5, 5.0]),
        probes=st.integers(1, 3),
    )
    def setup(
        self, consecutive: int, rate: float, min_requests: int, open_s: float, probes: int
    ) -> None:
        config = BreakerConfig(
            consecutive_failures=consecutive,
            failure_rate=rate,
            window_s=10,
            min_requests=min_requests,
            open_s=open_s,
            half_open_probes=probes,
        )
        self.breaker = CircuitBreaker(config, clock=self.clock)
        self.model = ReferenceBreaker(config)

    def _acquire(self) -> tuple[Permit, tuple[bool, int]] | None:
        expected = self.model.acquire(self.clock.now)
        permit = self.breaker.try_acquire()
        assert (permit is None) == (expected is None)
        if permit is None or expected is None:
            return None
        assert (permit.probe, permit.generation) == expected
        return permit, expected

    def _take(self, pick: int) -> tuple[Permit, tuple[bool, int]]:
        return self.outstanding.pop(pick % len(self.outstanding))

    @rule()
    def try_acquire(self) -> None:
        call = self._acquire()
        if call is not None:
            self.outstanding.append(call)

    @precondition(lambda self: self.outstanding)
    @rule(pick=st.integers(0, 7))
    def record_success(self, pick: int) -> None:
        permit, call = self._take(pick)
        self.breaker.record_success(permit)
        self.model.success(self.clock.now, call)

    @precondition(lambda self: self.outstanding)
    @rule(pick=st.integers(0, 7))
    def record_failure(self, pick: int) -> None:
        permit, call = self._take(pick)
        self.breaker.record_failure(permit)
        self.model.failure(self.clock.now, call)

    @precondition(lambda self: self.outstanding)
    @rule(pick=st.integers(0, 7))
    def release(self, pick: int) -> None:
        permit, call = self._take(pick)
        self.breaker.release(permit)
        self.model.release(self.clock.now, call)

    # Whole calls (admit, then a verdict) reach open and half-open in few steps, so deep
    # sequences (reopen, close, fail again) get explored within the example budget.
    @rule(failed=st.booleans())
    def whole_call(self, failed: bool) -> None:
        taken = self._acquire()
        if taken is None:
            return
        permit, call = taken
        if failed:
            self.breaker.record_failure(permit)
            self.model.failure(self.clock.now, call)
        else:
            self.breaker.record_success(permit)
            self.model.success(self.clock.now, call)

    @rule(seconds=st.sampled_from([0.5, 1.0, 4.0, 9.0]))
    def cool_down(self, seconds: float) -> None:
        self.breaker.cool_down(seconds)
        self.model.cooling_until = max(self.model.cooling_until, self.clock.now + seconds)

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 12.0]))
    def advance_time(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def agrees_with_model(self) -> None:
        now = self.clock.now
        expected_state = BreakerState(self.model.settle(now))
        assert self.breaker.state is expected_state
        assert self.breaker.available() == self.model.admits(now)
        assert self.breaker.retry_after() == self.model.retry_after(now)
        assert (self.breaker.retry_after() == 0) == self.breaker.available()

    @invariant()
    def probes_never_exceed_limit(self) -> None:
        assert self.model.probes <= self.model.c.half_open_probes


BreakerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_breaker_matches_reference_model = BreakerMachine.TestCase
