"""Logs for operators: one structured line per request (a record sink), and the JSON format
every service line is written in off a terminal.

A request's line carries ids, the tenant, the deployment, the outcome, tokens, cost and
latencies, and nothing the caller sent or received: never prompts, outputs, error messages
from upstream (they may quote the prompt) or keys. `content=True` (IMESH_LOG_CONTENT=1, for
debugging only) adds the error message.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

if TYPE_CHECKING:
    from router.recorder import AttemptRecord, RequestRecord

REQUEST_LOGGER = "imesh.request"
_MESSAGE = "request %s %s"
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
# The LogRecord attribute that carries a line's structured fields to JsonFormatter.
FIELDS = "imesh_fields"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the trace and span ids of
    the span current when the line was logged, and any structured fields passed as
    `extra={FIELDS: {...}}`. Exceptions go in `exc_info` as text."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if fields:
            line.update(fields)
        if "trace_id" not in line:
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                line["trace_id"] = format(span.trace_id, "032x")
                line["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line)


def _iso_time(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    # Lines come many to a second: format each second once.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class RequestLog:
    """A RecordSink that writes one INFO line per finished request to the `imesh.request`
    logger. Attempts are not logged (the request's line counts them). Costs one level
    check when INFO is off."""

    def __init__(self, *, content: bool = False, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(REQUEST_LOGGER)
        self._content = content

    def record_attempt(self, record: AttemptRecord) -> None:
        return None

    def record_request(self, record: RequestRecord) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        fields = request_fields(record)
        if self._content and record.error is not None:
            fields["error_message"] = record.error.message
        log = self._log
        # makeRecord + handle: what log.info does, minus finding the caller's frame (a
        # stack walk per line; the caller is always this method).
        entry = log.makeRecord(
            log.name,
            logging.INFO,
            __file__,
            0,
            _MESSAGE,
            (record.request_id, fields["outcome"]),
            None,
        )
        setattr(entry, FIELDS, fields)
        log.handle(entry)


def request_fields(record: RequestRecord) -> dict[str, Any]:
    """A request's structured fields, safe to log: no prompt, output, message or key."""
    usage = record.usage
    fields: dict[str, Any] = {
        "request_id": record.request_id,
        "tenant": record.caller.tenant,
        "key_id": record.caller.key_id,
        "model": record.model,
        "deployment": record.deployment,
        "outcome": record.outcome.value,
        "reason": None if record.error is None else str(record.error.reason),
        "attempts": record.attempts,
        "retries": record.retries,
        "hedges": record.hedges,
        "fallbacks": record.fallbacks,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "tokens_estimated": usage.estimated,
        "cost_usd": usage.cost_micros / 1_000_000,
        "latency_ms": round(record.latency_s * 1000, 3),
        "ttft_ms": None if record.ttft_s is None else round(record.ttft_s * 1000, 3),
        "overhead_ms": round(record.overhead_s * 1000, 3),
    }
    return fields
