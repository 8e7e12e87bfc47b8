"""Power-of-two-choices policy: of two random candidates, the less loaded first."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from imesh.v1 import chat_pb2
from router.policies.base import Target, TargetT


class PowerOfTwo:
    """Two random picks compared by in-flight count: near least-loaded balance without
    every router herding onto the same momentarily idle deployment."""

    name = "power_of_two"

    def __init__(
        self, rng: random.Random | None = None, *, load: Callable[[Any], float] | None = None
    ) -> None:
        self._rng = rng if rng is not None else random.Random()
        # "Less loaded": this process's calls in flight, unless the owner knows more (the
        # GPU pool adds what its replicas report).
        self._load: Callable[[Any], float] = load or _in_flight

    def rank(self, candidates: Sequence[TargetT], request: chat_pb2.ChatInput) -> list[TargetT]:
        if len(candidates) < 2:
            return list(candidates)
        i, j = self._rng.sample(range(len(candidates)), 2)
        first, second = candidates[i], candidates[j]
        if self._load(second) < self._load(first):
            first, second = second, first
        rest = sorted(
            (c for k, c in enumerate(candidates) if k != i and k != j),
            key=self._load,
        )
        return [first, second, *rest]


def _in_flight(target: Target) -> float:
    return float(target.in_flight)
