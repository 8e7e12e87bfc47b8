"""The RecordSink that turns every finished attempt (winners, hedge losers, failed and
cancelled streams) into one usage event for its tenant."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from router.tenancy.usage_event import UsageEvent
from router.tenancy.usage_events import UsageSink

if TYPE_CHECKING:
    from router.recorder import AttemptRecord, RequestRecord


class UsageRecorder:
    """Lifecycle: one per router, registered among the Recorder's sinks; the UsageSink it
    feeds is started and closed by its owner. Attempts of callers without a tenant (no
    tenancy configured) are not events."""

    def __init__(self, sink: UsageSink, wall_clock: Callable[[], float] = time.time) -> None:
        self._sink = sink
        self._wall = wall_clock

    def record_attempt(self, record: AttemptRecord) -> None:
        tenant = record.caller.tenant
        if tenant is None:
            return
        usage = record.usage
        self._sink.emit(
            UsageEvent(
                # Minted once per attempt: every copy of this event (a replayed buffer, a
                # retried batch) carries the same key, and no other event does.
                idempotency_key=uuid.uuid4().hex,
                at=self._wall(),
                tenant=tenant,
                key_id=record.caller.key_id or "",
                request_id=record.request_id,
                attempt=record.attempt,
                hedge=record.hedge,
                model=record.model,
                deployment=record.deployment,
                outcome=record.outcome.value,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                cost_micros=usage.cost_micros,
                latency_ms=round(record.latency_s * 1000),
                ttft_ms=-1 if record.ttft_s is None else round(record.ttft_s * 1000),
            )
        )

    def record_request(self, record: RequestRecord) -> None:
        return None  # the attempts carry the spend
