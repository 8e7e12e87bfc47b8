"""RequestScope: one request's state, created at authentication and carried through every
stage (authenticate -> admit -> plan -> execute -> settle)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from adapters.deadline import Deadline
from adapters.token_estimate import estimate_prompt_tokens
from imesh.v1 import chat_pb2, events_pb2

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from router.attempt import Attempt
    from router.planner import Plan


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling. `key_id` names the key without revealing it (None: no key was
    asked for); `tenant` is filled by a tenancy admitter."""

    key_id: str | None = None
    tenant: str | None = None


ANONYMOUS = Caller()


@dataclass(slots=True, eq=False)
class RequestScope:
    """Lifecycle: built by the authenticate stage, one per request, owned by the request's
    task. Stages fill it in order (`plan`, `attempts` and the counts); record sinks read it
    at settle. Nothing in it outlives the request.

    `deadline` is the request's one deadline (the caller's, capped by the router's
    request timeout) on the one clock, `time.monotonic()`; `started_at` is on that clock.
    `span` is the request's trace span while tracing is on (router.tracing; the caller's
    trace context arrives as the current OpenTelemetry context); `cache` is the caller's
    cache policy.
    """

    request_id: str
    caller: Caller
    request: chat_pb2.ChatInput
    deadline: Deadline
    started_at: float = field(default_factory=time.monotonic)
    plan: Plan | None = None
    attempts: list[Attempt] = field(default_factory=list)
    retries: int = 0  # attempts on a deployment this request had already tried
    fallbacks: int = 0  # primaries after the first, on a deployment not tried yet
    hedges: int = 0
    backoff_s: float = 0.0  # spent waiting between retries
    winner: Attempt | None = None
    span: Span | None = None  # the request's span while tracing is on (router.tracing)
    # The caller's call is unary: attempts ask for whole answers (GenerateRequest.whole).
    whole: bool = False
    # The caller's standing against its rate limits, set by an admitter (tenancy); the
    # router stamps it on the start event.
    rate_limit: events_pb2.RateLimitStatus | None = None
    # The name the caller asked for (`request.model`), read once.
    model: str = field(init=False)
    _prompt_tokens: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = self.request.model

    @property
    def cache(self) -> chat_pb2.CachePolicy.ValueType:
        return self.request.routing.cache

    @property
    def prompt_tokens_estimate(self) -> int:
        """The prompt's token estimate, made once per request (admission and the plan
        both need it; it walks every message)."""
        if self._prompt_tokens is None:
            self._prompt_tokens = estimate_prompt_tokens(self.request)
        return self._prompt_tokens
