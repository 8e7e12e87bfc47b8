"""The request log: one JSON line per request with ids, outcome, tokens, cost and latencies;
never the error's message (it may quote the prompt) unless content logging is on."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from imesh.errors import MeshError, Reason
from imesh.v1 import events_pb2
from router.recorder import RequestOutcome, RequestRecord
from router.request_log import REQUEST_LOGGER, JsonFormatter, RequestLog
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
