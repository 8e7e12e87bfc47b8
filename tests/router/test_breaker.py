"""CircuitBreaker transitions, probes, window and cool-down, on a fake clock."""

from __future__ import annotations

import pytest

from imesh.v1 import chat_service_pb2
from router.breaker import BreakerState, CircuitBreaker, Permit
from router.config import BreakerConfig


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: FakeClock, **overrides: float) -> CircuitBreaker:
    settings: dict[str, float] = {
        "consecutive_failures": 3,
        "failure_rate": 0.5,
        "window_s": 10,
        "min_requests": 100,  # rate rule off unless a test turns it on
        "open_s": 5,
        "half_open_probes": 1,
    }
    settings.update(overrides)
    return CircuitBreaker(BreakerConfig.model_validate(settings), clock=clock)


def state(breaker: CircuitBreaker) -> BreakerState:
    # A call, not the property, so mypy does not narrow the state between assertions.
    return breaker.state


def admit(breaker: CircuitBreaker) -> Permit:
    permit = breaker.try_acquire()
    assert permit is not None
    return permit


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.record_failure(admit(breaker))


def succeed(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.record_success(admit(breaker))


def open_breaker(clock: FakeClock, **overrides: float) -> CircuitBreaker:
    breaker = make(clock, **overrides)
    fail(breaker, 3)
    assert state(breaker) is BreakerState.OPEN
    return breaker


def test_new_breaker_is_closed_and_admits() -> None:
    breaker = make(FakeClock())
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.available()
    assert breaker.try_acquire()
    assert breaker.retry_after() == 0


def test_breaker_opens_after_consecutive_failures() -> None:
    breaker = make(FakeClock())
    fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED
    fail(breaker, 1)
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.available()
    assert not breaker.try_acquire()


def test_success_resets_the_consecutive_failure_count() -> None:
    breaker = make(FakeClock())
    fail(breaker, 2)
    succeed(breaker, 1)
    fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED


def test_breaker_opens_on_failure_rate_once_min_requests_are_in_the_window() -> None:
    breaker = make(FakeClock(), consecutive_failures=100, min_requests=10, failure_rate=0.5)
    for _ in range(4):
        succeed(breaker, 1)
        fail(breaker, 1)
    fail(breaker, 1)  # 9 verdicts, 5 failures: below min_requests
    assert state(breaker) is BreakerState.CLOSED
    succeed(breaker, 1)  # 10 verdicts, 5 failures: a success never opens
    assert state(breaker) is BreakerState.CLOSED
    fail(breaker, 1)  # 11 verdicts, 6 failures: rate 0.55 >= 0.5
    assert state(breaker) is BreakerState.OPEN


def test_failure_rate_below_threshold_keeps_breaker_closed() -> None:
    breaker = make(FakeClock(), consecutive_failures=100, min_requests=10, failure_rate=0.5)
    for _ in range(20):
        succeed(breaker, 2)
        fail(breaker, 1)
    assert state(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize(("gap_s", "expected"), [(5, BreakerState.OPEN), (11, BreakerState.CLOSED)])
def test_failures_older_than_the_window_do_not_count(gap_s: float, expected: BreakerState) -> None:
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=100, min_requests=10, failure_rate=0.5)
    for _ in range(4):
        fail(breaker, 1)
        succeed(breaker, 1)
    clock.advance(gap_s)
    succeed(breaker, 1)
    fail(breaker, 1)
    # Within the 10 s window that is 5 failures of 10; after it, 1 of 2 (below min_requests).
    assert state(breaker) is expected


def test_open_breaker_turns_half_open_after_open_s() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(4.9)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.retry_after() == pytest.approx(0.1)
    clock.advance(0.1)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.available()
    assert breaker.retry_after() == 0


def test_half_open_admits_only_half_open_probes_calls() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, half_open_probes=2)
    clock.advance(5)
    assert breaker.try_acquire()
    assert breaker.try_acquire()
    assert not breaker.available()
    assert not breaker.try_acquire()
    assert breaker.retry_after() > 0


def test_half_open_success_closes() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(5)
    breaker.record_success(admit(breaker))
    assert state(breaker) is BreakerState.CLOSED
    # The window and streak restart: two failures do not reopen a 3-in-a-row breaker.
    fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED


def test_half_open_failure_reopens() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(5)
    breaker.record_failure(admit(breaker))
    assert state(breaker) is BreakerState.OPEN
    assert breaker.retry_after() == pytest.approx(5)
    clock.advance(5)
    assert state(breaker) is BreakerState.HALF_OPEN


def test_release_frees_a_half_open_probe_slot_without_a_verdict() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(5)
    probe = admit(breaker)
    assert not breaker.try_acquire()
    breaker.release(probe)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.try_acquire()


def test_a_call_admitted_while_closed_ending_in_half_open_frees_no_probe_slot() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_probes=1)
    early = admit(breaker)  # a long stream admitted while closed
    fail(breaker, 3)
    clock.advance(5)
    assert state(breaker) is BreakerState.HALF_OPEN
    admit(breaker)  # the one probe
    breaker.release(early)  # the early call ends now: no verdict, and no probe slot freed
    assert not breaker.try_acquire()
    breaker.record_success(early)  # nor does its late verdict close the breaker
    breaker.record_failure(early)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.try_acquire()


def test_release_in_closed_counts_nothing() -> None:
    breaker = make(FakeClock())
    fail(breaker, 2)
    for _ in range(5):
        breaker.release(admit(breaker))
    fail(breaker, 1)  # the streak survived the releases
    assert state(breaker) is BreakerState.OPEN


def test_verdicts_while_open_are_ignored() -> None:
    clock = FakeClock()
    before = admit(make(clock))  # stands in for calls admitted before the breaker opened
    breaker = open_breaker(clock)
    late = Permit(probe=False, generation=before.generation)
    breaker.record_success(late)
    assert state(breaker) is BreakerState.OPEN
    clock.advance(3)
    breaker.record_failure(late)  # a late failure does not extend the open period
    clock.advance(2)
    assert state(breaker) is BreakerState.HALF_OPEN


def test_429_cooldown_does_not_count_as_failure() -> None:
    clock = FakeClock()
    breaker = make(clock)
    fail(breaker, 2)
    breaker.cool_down(2.0)
    assert state(breaker) is BreakerState.CLOSED
    assert not breaker.available()
    assert not breaker.try_acquire()
    assert breaker.retry_after() == pytest.approx(2.0)
    clock.advance(2.0)
    assert breaker.available()
    succeed(breaker, 1)
    fail(breaker, 2)  # the streak was 2 before; a success reset it, cool-down added nothing
    assert state(breaker) is BreakerState.CLOSED


def test_cooldown_keeps_the_longer_of_two_waits() -> None:
    clock = FakeClock()
    breaker = make(clock)
    breaker.cool_down(3.0)
    breaker.cool_down(1.0)
    assert breaker.retry_after() == pytest.approx(3.0)


def test_cooldown_outlasting_open_period_delays_half_open_admission() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    breaker.cool_down(8.0)
    clock.advance(5)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.try_acquire()
    assert breaker.retry_after() == pytest.approx(3.0)
    clock.advance(3)
    assert breaker.try_acquire()


def test_open_retry_after_counts_down_to_half_open() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    assert breaker.retry_after() == pytest.approx(5)
    clock.advance(2)
    assert breaker.retry_after() == pytest.approx(3)


@pytest.mark.parametrize(
    ("state", "proto"),
    [
        (BreakerState.CLOSED, chat_service_pb2.BREAKER_STATE_CLOSED),
        (BreakerState.OPEN, chat_service_pb2.BREAKER_STATE_OPEN),
        (BreakerState.HALF_OPEN, chat_service_pb2.BREAKER_STATE_HALF_OPEN),
    ],
)
def test_breaker_state_maps_to_proto_enum(state: BreakerState, proto: int) -> None:
    assert state.to_proto() == proto


def test_a_permit_from_before_an_outage_is_ignored_once_the_breaker_closed_again() -> None:
    clock = FakeClock()
    breaker = make(clock)
    before = admit(breaker)  # the closed state's permit of generation 0
    fail(breaker, 3)
    clock.advance(5)  # half-open
    breaker.record_success(admit(breaker))  # the probe closes it
    assert state(breaker) is BreakerState.CLOSED
    after = admit(breaker)
    assert after.generation == before.generation + 1
    fail(breaker, 2)
    breaker.record_failure(before)  # from before the outage: no third failure in a row
    assert state(breaker) is BreakerState.CLOSED
    breaker.record_failure(after)
    assert state(breaker) is BreakerState.OPEN
