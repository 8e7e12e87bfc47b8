"""Candidate: one deployment that can serve a request, as the planner ranks it and the
executor tries it (a policy `Target`)."""

from __future__ import annotations

from dataclasses import dataclass

from router.breaker import CircuitBreaker
from router.config import Deployment
from router.stats import DeploymentStats


@dataclass(frozen=True, slots=True)
class Candidate:
    """A deployment that passed the capability filter, with its live breaker and stats.
    `max_in_flight`: its per-deployment concurrency limit on this router (None: none)."""

    deployment: Deployment
    breaker: CircuitBreaker
    stats: DeploymentStats
    estimated_cost_micros: int
    max_in_flight: int | None = None

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def in_flight(self) -> int:
        return self.stats.in_flight

    @property
    def ttft_ewma(self) -> float | None:
        return self.stats.ttft_ewma

    @property
    def weight(self) -> int:
        return self.deployment.weight

    @property
    def full(self) -> bool:
        return self.max_in_flight is not None and self.stats.in_flight >= self.max_in_flight
