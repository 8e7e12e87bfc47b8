"""Logs for operators: one structured line per request (a record sink), the JSON format
every service line is written in off a terminal, and a handler that writes lines in
batches (one write per loop turn, not one per request).

A request's line carries ids, the tenant, the deployment, the outcome, tokens, cost and
latencies, and nothing the caller sent or received: never prompts, outputs, error messages
from upstream (they may quote the prompt) or keys. `content=True` (IMESH_LOG_CONTENT=1, for
debugging only) adds the error message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
import traceback
from typing import IO, TYPE_CHECKING, Any

import orjson
from opentelemetry import trace

if TYPE_CHECKING:
    from router.recorder import AttemptRecord, RequestRecord

REQUEST_LOGGER = "imesh.request"
_MESSAGE = "request %s %s"
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
        # orjson: a fifth of the json module's time for a request's line. Anything it
        # cannot encode is written as its str(), as before.
        return orjson.dumps(line, default=str).decode()


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
        "outcome": record.outcome._value_,  # the plain attribute `value` reads
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


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes its lines in batches: on the event loop's thread a
    line waits until the end of the loop turn (at most `delay_s`), so a loop that logs a
    line per request makes one write per turn, not one per request (each write wakes the
    log reader, on a small machine the other core). Lines of WARNING and above, lines
    logged off the loop, and a buffer of `max_lines` are written at once, in order.
    `flush()` and `close()` (logging.shutdown calls both at exit) write what is held.
    """

    def __init__(
        self, stream: IO[str] | None = None, *, delay_s: float = 0.005, max_lines: int = 256
    ) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._delay_s = delay_s
        self._max_lines = max_lines
        self._scheduled: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or len(self._lines) >= self._max_lines:
            self.flush()
            return
        if self._scheduled is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # off the loop: nobody would write it later
                self.flush()
                return
            self._scheduled = loop.call_later(self._delay_s, self._flush_later)

    def _flush_later(self) -> None:
        self._scheduled = None
        self.acquire()  # the lock emit() runs under (logging.Handler.handle)
        try:
            self.flush()
        finally:
            self.release()

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            try:
                self.stream.write("".join(lines))
            except Exception:
                # As logging does when a line cannot be written: say so, carry on.
                if logging.raiseExceptions:
                    traceback.print_exc(file=sys.stderr)
        super().flush()

    def close(self) -> None:
        scheduled, self._scheduled = self._scheduled, None
        if scheduled is not None:
            scheduled.cancel()
        self.flush()
        super().close()
