"""Per-replica health: passive ejection after failures in a row, one probe after it."""

from __future__ import annotations

from vllm_pool.health import ReplicaHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def health(clock: Clock, eject_after: int = 2) -> ReplicaHealth:
    return ReplicaHealth(eject_after=eject_after, eject_s=5, max_eject_s=12, clock=clock)


def test_failures_in_a_row_eject_the_replica() -> None:
    h = health(Clock())
    h.failed()
    h.failed()

    assert not h.available()


def test_a_success_between_failures_resets_the_count() -> None:
    h = health(Clock())
    h.failed()
    h.succeeded()
    h.failed()

    assert h.available()


def test_after_the_ejection_one_probe_is_let_through() -> None:
    clock = Clock()
    h = health(clock)
    h.failed()
    h.failed()
    clock.now += 5
    assert h.available()

    h.admit()

    assert not h.available()  # the probe is out: nobody else


def test_a_successful_probe_closes() -> None:
    clock = Clock()
    h = health(clock)
    h.failed()
    h.failed()
    clock.now += 5
    h.admit()
    h.succeeded()

    assert h.available()


def test_a_failed_probe_ejects_again_for_twice_as_long() -> None:
    clock = Clock()
    h = health(clock)
    h.failed()
    h.failed()
    clock.now += 5
    h.admit()
    h.failed()
    clock.now += 9.9

    assert not h.available()
    clock.now += 0.2
    assert h.available()


def test_ejection_time_is_capped() -> None:
    clock = Clock()
    h = health(clock, eject_after=1)
    for _ in range(5):
        h.failed()
        clock.now += 100
        h.admit()
    h.failed()
    clock.now += 12.1

    assert h.available()


def test_a_released_probe_frees_the_slot_without_a_verdict() -> None:
    clock = Clock()
    h = health(clock)
    h.failed()
    h.failed()
    clock.now += 5
    h.admit()
    h.released()

    assert h.available()
