"""Candidate: one deployment that can serve a request, as the planner ranks it and the
executor tries it (a policy `Target`)."""

from __future__ import annotations

from router.breaker import CircuitBreaker
from router.config import Deployment
from router.pricing import Rates
from router.stats import DeploymentStats


class Candidate:
    """A deployment that passed the capability filter, with its live breaker and stats.
    `max_in_flight`: its per-deployment concurrency limit on this router (None: none).
    `rates`: the deployment's price as integers (the planner passes the ones it converted
    at config load; made from `deployment.price` otherwise).

    Built per request (the estimate is the request's), so its fixed figures are plain
    attributes copied from the deployment, not properties; read-only by convention.
    """

    __slots__ = (
        "breaker",
        "deployment",
        "estimated_cost_micros",
        "max_in_flight",
        "name",
        "rates",
        "stats",
        "weight",
    )

    def __init__(
        self,
        deployment: Deployment,
        breaker: CircuitBreaker,
        stats: DeploymentStats,
        estimated_cost_micros: int,
        max_in_flight: int | None = None,
        rates: Rates | None = None,
    ) -> None:
        self.deployment = deployment
        self.breaker = breaker
        self.stats = stats
        self.estimated_cost_micros = estimated_cost_micros
        self.max_in_flight = max_in_flight
        self.name: str = deployment.name
        self.weight: int = deployment.weight
        self.rates = rates if rates is not None else Rates(deployment.price)

    @property
    def in_flight(self) -> int:
        return self.stats.in_flight

    @property
    def ttft_ewma(self) -> float | None:
        return self.stats.ttft_ewma

    @property
    def full(self) -> bool:
        return self.max_in_flight is not None and self.stats.in_flight >= self.max_in_flight

    def __repr__(self) -> str:
        return (
            f"Candidate({self.name!r}, estimated_cost_micros={self.estimated_cost_micros}, "
            f"max_in_flight={self.max_in_flight})"
        )
