"""The ranking seam: what a policy ranks (a Target) and the Policy protocol.

Generic over the target, so the router ranks deployments (`router.candidate.Candidate`)
and the GPU pool ranks replicas with the same policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from imesh.v1 import chat_pb2


class Target(Protocol):
    """What a policy reads of one thing it ranks. Read-only, cheap to read (policies read
    these on every request)."""

    @property
    def name(self) -> str: ...

    @property
    def in_flight(self) -> int:
        """Calls to it running now, from this process."""
        ...

    @property
    def ttft_ewma(self) -> float | None:
        """Smoothed time to first token, seconds; None before any sample."""
        ...

    @property
    def weight(self) -> int:
        """Share of the traffic under weighted round robin; 0: only as a fallback."""
        ...

    @property
    def estimated_cost_micros(self) -> int:
        """This request's estimated cost on it (0 where cost means nothing)."""
        ...


TargetT = TypeVar("TargetT", bound=Target)


class Policy(Protocol):
    """Orders the targets of one alias (or pool) for one request.

    `rank` returns every target exactly once: the first is tried first, the rest are the
    fallback order. Targets arrive in config order; that order breaks ties. A policy
    instance belongs to one alias (round robin keeps its turn per alias), is called on the
    event loop only, and must not block.
    """

    name: str

    def rank(self, targets: Sequence[TargetT], request: chat_pb2.ChatInput) -> list[TargetT]: ...
