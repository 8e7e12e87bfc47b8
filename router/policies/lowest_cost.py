"""Lowest-cost policy: cheapest estimated cost for this request first."""

from __future__ import annotations

from collections.abc import Sequence

from imesh.v1 import chat_pb2
from router.policies.base import TargetT


class LowestCost:
    name = "lowest_cost"

    def rank(self, candidates: Sequence[TargetT], request: chat_pb2.ChatInput) -> list[TargetT]:
        return sorted(candidates, key=lambda c: c.estimated_cost_micros)
