"""The ranking seam: a candidate deployment as policies see it, and the Policy protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from imesh.v1 import chat_pb2
from router.breaker import CircuitBreaker
from router.config import Deployment
from router.stats import DeploymentStats


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment that passed the capability filter and whose breaker admits calls."""

    deployment: Deployment
    breaker: CircuitBreaker
    stats: DeploymentStats
    estimated_cost_micros: int

    @property
    def name(self) -> str:
        return self.deployment.name


class Policy(Protocol):
    """Orders the candidates of one alias for one request.

    `rank` returns every candidate exactly once: the first is tried first, the rest are
    the fallback order. Candidates arrive in config order; that order breaks ties. A
    policy instance belongs to one alias (round robin keeps its turn per alias), is called
    on the event loop only, and must not block.
    """

    name: str

    def rank(
        self, candidates: Sequence[Candidate], request: chat_pb2.ChatInput
    ) -> list[Candidate]: ...
