"""Power-of-two-choices policy: of two random candidates, the less loaded first."""

from __future__ import annotations

import random
from collections.abc import Sequence

from imesh.v1 import chat_pb2
from router.policies.base import TargetT


class PowerOfTwo:
    """Two random picks compared by in-flight count: near least-loaded balance without
    every router herding onto the same momentarily idle deployment."""

    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def rank(self, candidates: Sequence[TargetT], request: chat_pb2.ChatInput) -> list[TargetT]:
        if len(candidates) < 2:
            return list(candidates)
        i, j = self._rng.sample(range(len(candidates)), 2)
        first, second = candidates[i], candidates[j]
        if second.in_flight < first.in_flight:
            first, second = second, first
        rest = sorted(
            (c for k, c in enumerate(candidates) if k != i and k != j),
            key=lambda c: c.in_flight,
        )
        return [first, second, *rest]
