"""Lowest-latency policy: smallest time-to-first-token EWMA first, unmeasured ones before all."""

from __future__ import annotations

from collections.abc import Sequence

from imesh.v1 import chat_pb2
from router.policies.base import Target, TargetT


def _key(candidate: Target) -> tuple[int, float]:
    ewma = candidate.ttft_ewma
    # A deployment without samples goes first so it gets measured; otherwise one that
    # started slow (or was added later) would never be tried again.
    return (0, 0.0) if ewma is None else (1, ewma)


class LowestLatency:
    name = "lowest_latency"

    def rank(self, candidates: Sequence[TargetT], request: chat_pb2.ChatInput) -> list[TargetT]:
        return sorted(candidates, key=_key)
