"""When to hedge: the delay after which a still-silent attempt gets a hedge beside it."""

from __future__ import annotations

from router.candidate import Candidate
from router.config import HedgeConfig


def hedge_delay_s(hedging: HedgeConfig, running: Candidate) -> float:
    """The request's (alias's) fixed delay, else the running deployment's fixed delay,
    else its observed p95 time to first token, else the configured default."""
    if hedging.delay_ms is not None:
        return hedging.delay_ms / 1000.0
    if running.deployment.hedge_delay_ms is not None:
        return running.deployment.hedge_delay_ms / 1000.0
    p95 = running.stats.ttft_p95()
    if p95 is not None:
        return p95
    return hedging.default_delay_ms / 1000.0


def hedge_has_time(delay_s: float, remaining_s: float | None) -> bool:
    """A hedge is worth starting only when the deadline leaves it at least the time the
    running attempt was given (the delay approximates a first token's p95)."""
    return remaining_s is None or remaining_s >= delay_s
