"""Weighted round robin, smooth like nginx's: weights 5,1,1 give a a b a c a a."""

from __future__ import annotations

from collections.abc import Sequence

from imesh.v1 import chat_pb2
from router.policies.base import TargetT


class WeightedRoundRobin:
    """Deterministic smooth weighted round robin over the candidates of one alias.

    Each pick adds every positive-weight candidate's weight to its running score, takes
    the highest score (ties: config order) and takes the total weight off the winner.
    Candidates missing from a call (breaker open) keep their score. Weight 0 is never
    first while a positive-weight candidate is present; it stays a fallback.
    State holds one int per deployment name of the alias, so it is bounded.
    """

    name = "weighted_round_robin"

    def __init__(self) -> None:
        self._score: dict[str, int] = {}

    def rank(self, candidates: Sequence[TargetT], request: chat_pb2.ChatInput) -> list[TargetT]:
        weighted = [c for c in candidates if c.weight > 0]
        if not weighted:
            return list(candidates)
        total = 0
        for c in weighted:
            total += c.weight
            self._score[c.name] = self._score.get(c.name, 0) + c.weight
        best = max(weighted, key=lambda c: self._score[c.name])  # max keeps the first of ties
        self._score[best.name] -= total
        # Fallbacks: who would be picked next, then the weight-0 ones in config order.
        rest = sorted((c for c in weighted if c is not best), key=lambda c: -self._score[c.name])
        return [best, *rest, *(c for c in candidates if c.weight <= 0)]
