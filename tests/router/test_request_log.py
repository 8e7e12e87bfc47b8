"""The request log: one JSON line per request with ids, outcome, tokens, cost and latencies;
never the error's message (it may quote the prompt) unless content logging is on."""

from __future__ import annotations

import asyncio
import decimal
import io
import json
import logging
import sys
from typing import Any

import pytest

from imesh.errors import MeshError, Reason
from imesh.v1 import events_pb2
from router.recorder import RequestOutcome, RequestRecord
from router.request_log import (
    FIELDS,
    REQUEST_LOGGER,
    BufferedLineHandler,
    JsonFormatter,
    RequestLog,
)
from router.scope import Caller

MARKER = "PLANTED-PROMPT-7f3a"


def record(error: MeshError | None = None) -> RequestRecord:
    return RequestRecord(
        request_id="rid-9",
        caller=Caller(key_id="k-1", tenant="alice"),
        model="chat",
        outcome=RequestOutcome.SUCCESS if error is None else RequestOutcome.FAILURE,
        reason=None if error is None else error.reason,
        error=error,
        deployment="fast-1" if error is None else None,
        attempts=2,
        retries=1,
        fallbacks=0,
        hedges=0,
        usage=events_pb2.Usage(prompt_tokens=10, completion_tokens=20, cost_micros=2500),
        latency_s=1.25,
        ttft_s=0.125,
        overhead_s=0.0005,
    )


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == REQUEST_LOGGER]


def test_one_json_line_per_request_with_its_figures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    RequestLog().record_request(record())
    (line,) = lines(caplog)
    assert line["level"] == "INFO"
    assert line["request_id"] == "rid-9"
    assert (line["tenant"], line["key_id"], line["deployment"]) == ("alice", "k-1", "fast-1")
    assert (line["outcome"], line["attempts"], line["retries"]) == ("success", 2, 1)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (10, 20)
    assert line["cost_usd"] == pytest.approx(0.0025)
    assert (line["latency_ms"], line["ttft_ms"]) == (1250.0, 125.0)


def test_an_error_message_is_not_logged_unless_content_logging_is_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    error = MeshError.of(Reason.UPSTREAM_BAD_REQUEST, f"provider refused: '{MARKER}'")
    RequestLog().record_request(record(error))
    (line,) = lines(caplog)
    assert line["reason"] == "UPSTREAM_BAD_REQUEST"
    assert MARKER not in json.dumps(line)
    caplog.clear()
    RequestLog(content=True).record_request(record(error))
    (line,) = lines(caplog)
    assert MARKER in str(line["error_message"])


def test_nothing_is_built_when_info_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=REQUEST_LOGGER)
    RequestLog().record_request(record())
    assert lines(caplog) == []


def test_json_lines_carry_exceptions_as_text() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
    entry = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("now",), info)
    line = json.loads(JsonFormatter().format(entry))
    assert line["message"] == "failed now"
    assert "ValueError: boom" in line["exc_info"]


class Writes(io.StringIO):
    """A stream that counts its writes (each one a syscall on a real pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def buffered(stream: Writes, **options: Any) -> logging.Logger:
    handler = BufferedLineHandler(stream, **options)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test.buffered.{id(stream)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger


async def test_lines_logged_in_one_loop_turn_leave_in_one_write() -> None:
    stream = Writes()
    log = buffered(stream)
    for k in range(5):
        log.info("line %d", k)
    assert stream.getvalue() == ""  # held until the turn is over
    await asyncio.sleep(0.02)
    assert stream.getvalue() == "".join(f"line {k}\n" for k in range(5))
    assert stream.writes == 1


async def test_a_warning_leaves_at_once_after_the_lines_held_before_it() -> None:
    stream = Writes()
    log = buffered(stream)
    log.info("first")
    log.warning("careful")
    assert stream.getvalue() == "first\ncareful\n"
    assert stream.writes == 1


async def test_a_full_buffer_is_written_at_once() -> None:
    stream = Writes()
    log = buffered(stream, max_lines=3)
    for k in range(4):
        log.info("%d", k)
    assert stream.getvalue() == "0\n1\n2\n"
    await asyncio.sleep(0.02)
    assert stream.getvalue() == "0\n1\n2\n3\n"


def test_off_the_loop_a_line_is_written_at_once() -> None:
    stream = Writes()
    buffered(stream).info("no loop")
    assert stream.getvalue() == "no loop\n"


async def test_closing_writes_what_is_held() -> None:
    stream = Writes()
    log = buffered(stream)
    log.info("held")
    for handler in log.handlers:
        handler.close()
    assert stream.getvalue() == "held\n"
    await asyncio.sleep(0.02)
    assert stream.getvalue() == "held\n"  # the cancelled flush wrote nothing twice


def test_values_json_cannot_hold_are_written_as_text() -> None:
    entry = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    setattr(entry, FIELDS, {"reason": Reason.OVERLOADED, "at": decimal.Decimal("1.5")})
    line = json.loads(JsonFormatter().format(entry))
    assert (line["reason"], line["at"]) == (str(Reason.OVERLOADED), "1.5")
