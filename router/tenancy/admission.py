"""The tenancy stages: authentication (key -> Caller with its tenant) and the Admitter that
checks the model, sheds low priorities under overload and reserves against the tenant's
limits; its Ticket settles the reservation to the real usage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from adapters.token_estimate import estimate_prompt_tokens
from imesh.errors import MeshError, Reason
from imesh.v1 import chat_pb2, events_pb2
from router.config import MeshConfig
from router.pricing import estimate_cost_micros
from router.scope import Caller, RequestScope
from router.tenancy.authenticate import KeyAuthenticator, require_model
from router.tenancy.config import OverloadSettings, TenantConfig
from router.tenancy.fallback import FallbackLimiter
from router.tenancy.limits import Grant, RateFigures, Reservation

if TYPE_CHECKING:
    from router.admission import Ticket

log = logging.getLogger(__name__)


class TenantAuthenticator:
    """The authenticate stage's tenancy form: a caller's raw key to a `Caller` naming the
    key id and the tenant. Raises MeshError UNAUTHENTICATED (missing, unknown, revoked)."""

    def __init__(self, keys: KeyAuthenticator) -> None:
        self._keys = keys

    async def authenticate(self, api_key: str | None) -> Caller:
        principal = await self._keys.authenticate(api_key)
        return Caller(key_id=principal.key_id, tenant=principal.tenant)


class ReservationEstimator:
    """What a request may spend at most, before planning: the prompt estimate plus its
    max_tokens (else the largest max_output_tokens among its candidates), priced at the
    dearest candidate. Built once from the config."""

    def __init__(self, config: MeshConfig) -> None:
        deployments = {d.name: d for d in config.deployments}
        self._candidates = {name: [deployments[name]] for name in deployments}
        for alias, spec in config.aliases.items():
            self._candidates[alias] = [deployments[c] for c in spec.candidates]

    def estimate(
        self, tenant: str, request: chat_pb2.ChatInput, prompt_tokens: int | None = None
    ) -> Reservation:
        """`prompt_tokens`: the request's estimate when the caller has it already."""
        prompt = estimate_prompt_tokens(request) if prompt_tokens is None else prompt_tokens
        candidates = self._candidates.get(request.model, [])
        if request.HasField("max_tokens"):
            completion = max(request.max_tokens, 0)
        else:
            completion = max((d.max_output_tokens for d in candidates), default=0)
        cost = max(
            (estimate_cost_micros(prompt, completion, d.price) for d in candidates), default=0
        )
        return Reservation(tenant, prompt + completion, cost)


class TenantAdmitter:
    """Lifecycle: one per router, shared by its requests; `aclose()` waits for settlements
    still in flight. Needs a scope whose caller was authenticated by TenantAuthenticator.

    Refusals: PERMISSION_DENIED (model not allowed), OVERLOADED (a low-priority tenant while
    this router is over `shed_in_flight`), RATE_LIMITED / QUOTA_EXCEEDED / BUDGET_EXCEEDED
    with RetryInfo and the `x-ratelimit-*` figures in the error's metadata, or
    TENANCY_UNAVAILABLE (a fail-closed tenant while Redis is down).
    """

    def __init__(
        self,
        tenants: Mapping[str, TenantConfig],
        limiter: FallbackLimiter,
        estimator: ReservationEstimator,
        overload: OverloadSettings,
    ) -> None:
        self._tenants = dict(tenants)
        self._limiter = limiter
        self._estimator = estimator
        self._overload = overload
        self._settling: set[asyncio.Future[Any]] = set()
        self.in_flight = 0
        # Each tenant's standing after its latest admission (metrics read it at scrape).
        self.standing: dict[str, RateFigures] = {}

    async def admit(self, scope: RequestScope) -> Ticket:
        name = scope.caller.tenant
        tenant = self._tenants.get(name) if name is not None else None
        if name is None or tenant is None:
            raise MeshError.of(Reason.MISSING_API_KEY, "an API key of a tenant is required")
        require_model(name, tenant, scope.model)
        shed_at = self._overload.shed_in_flight
        if (
            shed_at is not None
            and self.in_flight >= shed_at
            and tenant.priority < self._overload.protected_priority
        ):
            raise MeshError.of(
                Reason.OVERLOADED,
                f"the router is shedding priority {tenant.priority} under load; retry shortly",
                retry_after=1.0,
            )
        reservation = self._estimator.estimate(name, scope.request, scope.prompt_tokens_estimate)
        reserving = asyncio.ensure_future(self._limiter.reserve(tenant, reservation))
        try:
            # Shielded: once the script ran in Redis, the grant exists whether or not the
            # caller is still there to take it.
            grant = await asyncio.shield(reserving)
        except asyncio.CancelledError:
            self._settling.add(reserving)  # aclose() waits for it too
            reserving.add_done_callback(self._release_orphan)
            raise
        self.standing[name] = grant.figures
        scope.rate_limit = grant.figures.to_proto()  # the start event carries it to the caller
        self.in_flight += 1
        return _TenantTicket(self, grant)

    def _settle(self, grant: Grant, tokens: int, cost_micros: int) -> None:
        self.in_flight -= 1
        self._settle_later(grant, tokens, cost_micros)

    def _release_orphan(self, reserving: asyncio.Future[Grant]) -> None:
        """A grant made for a caller cancelled while it was on its way: give it back."""
        self._settling.discard(reserving)
        if not reserving.cancelled() and reserving.exception() is None:
            self._settle_later(reserving.result(), 0, 0)

    def _settle_later(self, grant: Grant, tokens: int, cost_micros: int) -> None:
        task = asyncio.get_running_loop().create_task(
            self._limiter.settle(grant, tokens, cost_micros), name="tenancy-settle"
        )
        self._settling.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Future[None]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("tenancy: settling a reservation failed", exc_info=task.exception())

    async def settled(self) -> None:
        """Returns once every settlement begun so far has ended."""
        while self._settling:  # a grant that arrives late starts its own settlement
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def aclose(self) -> None:
        await self.settled()


class _TenantTicket:
    __slots__ = ("_admitter", "_grant")

    def __init__(self, admitter: TenantAdmitter, grant: Grant) -> None:
        self._admitter: TenantAdmitter | None = admitter
        self._grant = grant

    def settle(self, usage: events_pb2.Usage) -> None:
        self._end(usage.prompt_tokens + usage.completion_tokens, usage.cost_micros)

    def release(self) -> None:
        self._end(0, 0)

    def _end(self, tokens: int, cost_micros: int) -> None:
        admitter, self._admitter = self._admitter, None
        if admitter is not None:  # once, whichever way the request ended
            admitter._settle(self._grant, tokens, cost_micros)
