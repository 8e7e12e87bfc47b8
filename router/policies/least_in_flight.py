"""Least-in-flight policy: the deployment with the fewest running attempts first."""

from __future__ import annotations

from collections.abc import Sequence

from imesh.v1 import chat_pb2
from router.policies.base import TargetT


class LeastInFlight:
    name = "least_in_flight"

    def rank(self, candidates: Sequence[TargetT], request: chat_pb2.ChatInput) -> list[TargetT]:
        # sorted() is stable: equal loads keep config order.
        return sorted(candidates, key=lambda c: c.in_flight)
