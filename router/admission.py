"""The admit stage's seam (Admitter -> Ticket) and the router's own concurrency limit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from imesh.errors import MeshError, Reason
from imesh.v1 import events_pb2
from router.config import AdmissionConfig
from router.scope import RequestScope


class Ticket(Protocol):
    """What an admitter holds for one admitted request.

    The settle stage calls exactly one of these, once, however the request ends (served,
    failed, cancelled by the caller, or crashed): `settle` with what the request really
    spent (every attempt's usage, hedge losers included), `release` when nothing is known
    (the router failed before any attempt ended). Both run on the event loop, possibly
    inside a cancelled task: synchronous, cheap, never raising (queue any I/O).
    """

    def settle(self, usage: events_pb2.Usage) -> None: ...

    def release(self) -> None: ...


class Admitter(Protocol):
    """Lets a request in, or refuses it at once (never queues it).

    Lifecycle: built once per router and shared by its requests; called on the event loop
    after authentication and before planning. A refusal is a MeshError (a limit:
    RESOURCE_EXHAUSTED with `retry_after`); an admitted request gets a Ticket back.
    """

    async def admit(self, scope: RequestScope) -> Ticket: ...


class ConcurrencyLimiter:
    """At most `max_in_flight` requests (streams until their end) at once on this router;
    one more is refused at once with OVERLOADED and a RetryInfo. The count is held by the
    ticket, so a request that is cancelled anywhere gives its slot back."""

    def __init__(self, config: AdmissionConfig) -> None:
        self._max = config.max_in_flight
        self._retry_after = config.retry_after_s
        self.in_flight = 0

    async def admit(self, scope: RequestScope) -> Ticket:
        if self.in_flight >= self._max:
            raise MeshError.of(
                Reason.OVERLOADED,
                f"the router is at its limit of {self._max} requests in flight; retry shortly",
                retry_after=self._retry_after,
            )
        self.in_flight += 1
        return _Slot(self)


class _Slot:
    __slots__ = ("_limiter",)

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self._limiter: ConcurrencyLimiter | None = limiter

    def settle(self, usage: events_pb2.Usage) -> None:
        self.release()

    def release(self) -> None:
        if self._limiter is not None:  # once, whichever way the request ended
            self._limiter.in_flight -= 1
            self._limiter = None


async def admit_all(admitters: Sequence[Admitter], scope: RequestScope) -> Ticket:
    """Every admitter in order; when one refuses (or the caller goes away meanwhile), the
    tickets already given are released before the error propagates."""
    tickets: list[Ticket] = []
    try:
        for admitter in admitters:
            tickets.append(await admitter.admit(scope))
    except BaseException:
        for ticket in reversed(tickets):
            ticket.release()
        raise
    return tickets[0] if len(tickets) == 1 else _Tickets(tickets)


class _Tickets:
    __slots__ = ("_tickets",)

    def __init__(self, tickets: list[Ticket]) -> None:
        self._tickets = tickets

    def settle(self, usage: events_pb2.Usage) -> None:
        for ticket in reversed(self._tickets):
            ticket.settle(usage)

    def release(self) -> None:
        for ticket in reversed(self._tickets):
            ticket.release()
