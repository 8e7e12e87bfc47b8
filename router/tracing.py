"""Router spans: one per request, and a child per attempt marked by kind (primary, retry,
fallback, hedge) and as winner or loser, with the GenAI semantic-convention attributes.

Only the OpenTelemetry API is used; until a composition root installs the SDK the global
provider is a no-op, and then every method returns after one attribute check.

How the spans hang together: the request span's parent is the context current when the
request arrives (the gRPC server span, or the edge's span in `imesh up`). An attempt runs
in its own task, created with a context in which its span is current, so the backend's
outgoing call (the gRPC client span to an adapter service, the HTTP request to a
provider) is the attempt's child and carries its `traceparent`. The request's own task
never has a span attached: it is an async generator's consumer, and attaching across its
yields would leak into whatever the caller runs next.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace

from imesh.v1 import events_pb2
from router.recorder import AttemptRecord, Outcome, RequestOutcome, RequestRecord

if TYPE_CHECKING:
    from router.attempt import Attempt
    from router.scope import RequestScope

_FINISH_REASONS = {
    events_pb2.FINISH_REASON_STOP: "stop",
    events_pb2.FINISH_REASON_LENGTH: "length",
    events_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    events_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
}


def tracing_enabled(provider: trace.TracerProvider) -> bool:
    """False for the API's stand-ins (nothing installed an SDK provider)."""
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class RouterTracer:
    """Lifecycle: one per router. `start_request` when a request's scope exists,
    `attempt_context` when an attempt's task is created, `end_attempt` and `end_request`
    from the recorder with the records. A span is stored on its scope or attempt, so
    nothing is kept here between calls."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        provider = provider or trace.get_tracer_provider()
        self.enabled = tracing_enabled(provider)
        self._tracer = provider.get_tracer("imesh.router")

    def start_request(self, scope: RequestScope) -> None:
        if not self.enabled:
            return
        request = scope.request
        attributes: dict[str, str | int | float] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": scope.model,
            "imesh.request_id": scope.request_id,
        }
        if request.HasField("max_tokens"):
            attributes["gen_ai.request.max_tokens"] = request.max_tokens
        if request.HasField("temperature"):
            attributes["gen_ai.request.temperature"] = request.temperature
        if request.HasField("top_p"):
            attributes["gen_ai.request.top_p"] = request.top_p
        scope.span = self._tracer.start_span(
            f"chat {scope.model}", kind=trace.SpanKind.INTERNAL, attributes=attributes
        )

    def attempt_context(self, attempt: Attempt) -> contextvars.Context | None:
        """A context for the attempt's task in which its span is current (None: tracing
        is off, use the default)."""
        parent = attempt.scope.span
        if not self.enabled or parent is None:
            return None
        deployment = attempt.candidate.deployment
        span = self._tracer.start_span(
            f"attempt {deployment.name}",
            context=trace.set_span_in_context(parent),
            kind=trace.SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": attempt.scope.model,
                "gen_ai.provider.name": deployment.provider,
                "imesh.deployment": deployment.name,
                "imesh.attempt.number": attempt.number,
                "imesh.attempt.kind": attempt.kind.value,
            },
        )
        attempt.span = span
        context = contextvars.copy_context()
        # Attached inside the task's own copy: it lives and dies with the task.
        context.run(otel_context.attach, trace.set_span_in_context(span))
        return context

    def end_attempt(self, attempt: Attempt, record: AttemptRecord) -> None:
        span = attempt.span
        if span is None:
            return
        attempt.span = None
        usage = record.usage
        span.set_attributes(
            {
                "gen_ai.response.model": attempt.candidate.deployment.model,
                "gen_ai.usage.input_tokens": usage.prompt_tokens,
                "gen_ai.usage.output_tokens": usage.completion_tokens,
                "imesh.usage.estimated": usage.estimated,
                "imesh.cost_usd": usage.cost_micros / 1_000_000,
                "imesh.attempt.outcome": record.outcome.value,
                "imesh.attempt.winner": record.won,
            }
        )
        if attempt.finish is not None:
            reason = _FINISH_REASONS.get(attempt.finish.reason)
            if reason is not None:
                span.set_attribute("gen_ai.response.finish_reasons", [reason])
        if record.error is not None:
            span.set_attribute("error.type", record.error.reason.value)
            if record.outcome is not Outcome.CANCELLED:
                span.set_status(trace.StatusCode.ERROR, record.error.reason.value)
        span.end()

    def end_request(self, scope: RequestScope, record: RequestRecord) -> None:
        span = scope.span
        if span is None:
            return
        scope.span = None
        usage = record.usage
        attributes: dict[str, str | bool | int | float] = {
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "imesh.outcome": record.outcome.value,
            "imesh.attempts": record.attempts,
            "imesh.retries": record.retries,
            "imesh.fallbacks": record.fallbacks,
            "imesh.hedges": record.hedges,
            "imesh.cost_usd": usage.cost_micros / 1_000_000,
        }
        if record.deployment is not None:
            attributes["imesh.deployment"] = record.deployment
        if record.caller.tenant is not None:
            attributes["imesh.tenant"] = record.caller.tenant
        span.set_attributes(attributes)
        winner = scope.winner
        if winner is not None and winner.finish is not None:
            reason = _FINISH_REASONS.get(winner.finish.reason)
            if reason is not None:
                span.set_attribute("gen_ai.response.finish_reasons", [reason])
        if record.reason is not None:
            span.set_attribute("error.type", record.reason.value)
            if record.outcome is RequestOutcome.FAILURE:
                span.set_status(trace.StatusCode.ERROR, record.reason.value)
        span.end()
