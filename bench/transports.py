"""Which HTTP client a provider adapter should use, by measurement: the same relay (aiohttp
server, orjson per event) with its upstream call made by each candidate httpx transport, and
plain aiohttp as the floor; plus, for a non-streaming caller, a non-streaming upstream call
against streaming from the upstream and aggregating. Written to transports.md / .json."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import minimal_relay
from bench.environment import describe_environment
from bench.load import Call, HttpTarget
from bench.markdown import NOISE, load_text
from bench.measure import Log, Subject, measure_round, warm_up
from bench.plan import BenchSettings, Scenario
from bench.processes import Pinning, Servers, pin
from bench.report import SubjectReport
from bench.scenario import UPSTREAM_MODEL
from bench.transport_relay import TRANSPORTS
from bench.upstream import READY_PREFIX

FLOOR = "aiohttp (minimal relay)"
# Read from each package's transport: what the adapter tests must show before one is adopted.
CAVEATS: dict[str, tuple[str, ...]] = {
    "httpx-aiohttp": (
        "No HTTP/2: `http2=True` logs a warning and speaks HTTP/1.1, so a provider configured "
        "for HTTP/2 keeps httpx's own transport.",
        "Errors: every aiohttp `ClientConnectionError` maps to `httpx.ConnectTimeout`, "
        "`ServerDisconnectedError` included (a truncated body is `ReadError`); the adapter's "
        "error classification and the breaker verdicts on it must be re-checked against the "
        "cassette and fault tests.",
        "Timeouts: httpx's `pool` timeout becomes aiohttp's `connect` (pool wait plus "
        "connect), `read` becomes `sock_read`; there is no write timeout.",
        "Pool: `max_connections` becomes the connector's `limit`; `max_keepalive_connections` "
        "is ignored. Cancellation closes the aiohttp response, which releases the connection.",
    ),
    "httpx-curl-cffi": (
        "HTTP/2 through libcurl. The package is young (0.1.x) and its curl-cffi dependency "
        "ships its own libcurl build.",
        "Timeouts: httpx's `pool` and `write` timeouts are ignored (a wait for a free handle "
        "is unbounded); `connect` and `read` go to curl as a pair: check that `read` bounds "
        "each wait for bytes, not the whole transfer, before a stream relies on it.",
        "Pool: `max_connections` becomes curl-cffi's `max_clients` (concurrent handles).",
    ),
}
AGGREGATE = " + aggregate"
# Transports the non-streaming question is asked over: today's default and the challenger
# (the calling pattern, not the transport, decides it; two keep the run short).
AGGREGATED = ("httpx", "httpx-aiohttp")
# Rounds of the comparison (interleaved like the main bench's).
ROUNDS = 2


def plan(settings: BenchSettings) -> tuple[Scenario, ...]:
    """Token streaming, non-streaming at concurrency N (short and long answers), and c=1."""
    return (
        Scenario("tokens", Call(True), settings.streams * settings.stream_waves, settings.streams),
        Scenario(
            "throughput",
            Call(False, settings.tokens),
            settings.throughput_requests,
            settings.concurrency,
        ),
        Scenario(
            "throughput-long",
            Call(False, settings.stream_tokens),
            max(settings.throughput_requests // 4, 1),
            settings.concurrency,
        ),
        Scenario("latency", Call(False, settings.tokens), max(settings.requests // 2, 1), 1),
    )


@dataclass(frozen=True, slots=True)
class Row:
    """One candidate's figures (medians over rounds)."""

    name: str
    cpu_us_per_token: float | None
    cpu_ms_per_request: float | None
    rps: float | None
    cpu_ms_per_request_long: float | None
    latency_p50: float | None


@dataclass(slots=True)
class TransportComparison:
    environment: dict[str, Any]
    subjects: list[SubjectReport] = field(default_factory=list)
    total_s: float = 0.0

    @property
    def all_ok(self) -> bool:
        return all(s.errors == 0 for s in self.subjects)

    def rows(self) -> list[Row]:
        return [row_of(s) for s in self.subjects]

    def write_json(self, path: str | Path) -> None:
        data = {**asdict(self), "rows": [asdict(r) for r in self.rows()]}
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _median_of(subject: SubjectReport, scenario: str, what: str) -> float | None:
    values: list[float] = []
    for r in subject.rounds:
        m = r.measurements.get(scenario)
        if m is None:
            continue
        value = {
            "cpu_token": m.cpu_us_per_token(subject.server),
            "cpu_request": m.cpu_ms_per_request(subject.server),
            "rps": m.rps,
            "p50": m.latency_ms.p50 if m.latency_ms else None,
        }[what]
        if value is not None:
            values.append(value)
    values.sort()
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def row_of(subject: SubjectReport) -> Row:
    return Row(
        subject.name,
        _median_of(subject, "tokens", "cpu_token"),
        _median_of(subject, "throughput", "cpu_request"),
        _median_of(subject, "throughput", "rps"),
        _median_of(subject, "throughput-long", "cpu_request"),
        _median_of(subject, "latency", "p50"),
    )


async def run_transports(settings: BenchSettings, log: Log = lambda _: None) -> TransportComparison:
    """Every candidate as its own relay process on the server core; every process stopped
    before this returns."""
    t0 = time.perf_counter()
    pinning = Pinning.plan(settings.pin)
    comparison = TransportComparison(describe_environment(pinning, None))
    original_cpus = os.sched_getaffinity(0) if pinning.client_cpu is not None else None
    servers = Servers(pinning, settings.startup_timeout_s)
    subjects: list[Subject] = []
    scenarios = plan(settings)
    connections = max(settings.concurrency, settings.streams)
    py = sys.executable
    try:
        pin(0, pinning.client_cpu)
        log("transports: starting the upstream and one relay per candidate")
        upstream = servers.start(
            "upstream",
            [py, "-m", "bench.upstream", "--tokens", str(settings.stream_tokens)],
            under_test=False,
        )
        upstream_url = await servers.address(upstream, READY_PREFIX) + "/v1"
        candidates: list[tuple[str, list[str]]] = [
            (FLOOR, [py, "-m", "bench.minimal_relay", "--upstream", upstream_url])
        ]
        for name in TRANSPORTS:
            argv = [py, "-m", "bench.transport_relay", "--upstream", upstream_url]
            candidates.append((name, [*argv, "--transport", name]))
            if name in AGGREGATED:
                candidates.append((name + AGGREGATE, [*argv, "--transport", name, "--aggregate"]))
        for name, argv in candidates:
            proc = servers.start(name, argv, under_test=True)
            url = await servers.address(proc, minimal_relay.READY_PREFIX) + "/v1"
            target = HttpTarget(url, UPSTREAM_MODEL, connections=connections)
            subjects.append(Subject(name, name, " ".join(argv[1:3]), name, target, {name: proc}))
        for subject in subjects:
            await warm_up(subject, scenarios, settings, log)
        for index in range(ROUNDS):
            log(f"transports: round {index + 1}/{ROUNDS}")
            await measure_round(subjects, index, scenarios, settings)
    finally:
        for subject in subjects:
            with contextlib.suppress(Exception):
                await subject.target.aclose()
        servers.stop_all()
        if original_cpus is not None:
            os.sched_setaffinity(0, original_cpus)
    comparison.subjects = [s.report() for s in subjects]
    comparison.total_s = time.perf_counter() - t0
    return comparison


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None, floor: float | None) -> str:
    return "-" if value is None or not floor else f"{value / floor:.2f}x"


def recommendation(rows: Sequence[Row]) -> list[str]:
    """What this run's figures say: the cheapest httpx transport for streaming and for
    non-streaming calls, how a non-streaming caller is served more cheaply, and the verdict."""
    by_name = {r.name: r for r in rows}
    plain = [r for r in rows if r.name in TRANSPORTS]
    lines: list[str] = []
    streaming = [r for r in plain if r.cpu_us_per_token is not None]
    best_stream = min(streaming, key=lambda r: r.cpu_us_per_token or 0.0, default=None)
    if best_stream is not None:
        others = ", ".join(
            f"{r.name} {r.cpu_us_per_token:.1f} µs" for r in streaming if r is not best_stream
        )
        lines.append(
            f"Streaming: **{best_stream.name}** costs the least CPU per relayed token "
            f"({best_stream.cpu_us_per_token:.1f} µs; {others})."
        )
    unary = [r for r in plain if r.cpu_ms_per_request is not None]
    best_unary = min(unary, key=lambda r: r.cpu_ms_per_request or 0.0, default=None)
    if best_unary is not None:
        others = ", ".join(
            f"{r.name} {r.cpu_ms_per_request:.2f} ms" for r in unary if r is not best_unary
        )
        lines.append(
            f"Non-streaming at concurrency 32: **{best_unary.name}** costs the least CPU per "
            f"request ({best_unary.cpu_ms_per_request:.2f} ms; {others})."
        )
    aggregate_costs_more: list[bool] = []
    for r in plain:
        agg = by_name.get(r.name + AGGREGATE)
        if agg is None or r.cpu_ms_per_request is None or agg.cpu_ms_per_request is None:
            continue
        short = agg.cpu_ms_per_request / r.cpu_ms_per_request
        long = (
            agg.cpu_ms_per_request_long / r.cpu_ms_per_request_long
            if agg.cpu_ms_per_request_long and r.cpu_ms_per_request_long
            else None
        )
        aggregate_costs_more.append(short > 1 and (long is None or long > 1))
        cheaper = "a non-streaming upstream call" if short > 1 else "streaming and aggregating"
        lines.append(
            f"Non-streaming caller over {r.name}: streaming from the upstream and aggregating "
            f"costs {short:.2f}x the CPU of a non-streaming upstream call at short answers"
            + (f" and {long:.2f}x at long ones" if long is not None else "")
            + f"; {cheaper} is cheaper."
        )
    verdict = []
    if best_stream is not None and best_unary is not None:
        if best_stream is best_unary:
            verdict.append(f"use **{best_stream.name}** for providers on HTTP/1.1")
        else:
            verdict.append(
                f"streaming favours **{best_stream.name}**, non-streaming **{best_unary.name}**"
            )
    if aggregate_costs_more and all(aggregate_costs_more):
        verdict.append("serve a non-streaming caller with a non-streaming upstream call")
    elif aggregate_costs_more and not any(aggregate_costs_more):
        verdict.append("serve a non-streaming caller by streaming and aggregating")
    if verdict:
        lines.append("**Recommendation from this run**: " + "; ".join(verdict) + ".")
    return lines


def transports_markdown(comparison: TransportComparison) -> str:
    rows = comparison.rows()
    floor = next((r for r in rows if r.name == FLOOR), None)
    env = comparison.environment
    lines = [
        "# Upstream HTTP: httpx transports measured as relays",
        "",
        f"- date: {env.get('date')}; commit {env.get('commit')}; took {comparison.total_s:.0f} s",
        f"- machine: {env.get('cpu')}, {env.get('cpus')} CPUs; Python {env.get('python')}",
        f"- load average (1, 5, 15 min) at start: {load_text(env.get('load_average_at_start'))}; "
        f"{env.get('pinning')}",
        "- versions: "
        + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if k != "litellm"),
        "",
        "Each candidate is the same relay (`bench/transport_relay.py`: aiohttp server, every SSE "
        "event's JSON re-encoded with orjson, one write per upstream read) with its upstream "
        "call made by an `httpx.AsyncClient` over the named transport, in its own process on "
        "the server core; the floor is the minimal relay (aiohttp client, no httpx). "
        "`+ aggregate` serves a non-streaming caller by streaming from the upstream and "
        "building the answer from the chunks, instead of a non-streaming upstream call. "
        f"Medians over {ROUNDS} interleaved rounds.",
        "",
        f"> {NOISE}",
        "",
        "| relay's upstream client | CPU µs/token (16 x 256 streams) | vs floor | CPU ms/req "
        "@32, 16 tokens | vs floor | RPS @32 | CPU ms/req @32, 256 tokens | p50 ms @1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {_f(r.cpu_us_per_token, 1)} "
            f"| {_ratio(r.cpu_us_per_token, floor.cpu_us_per_token if floor else None)} "
            f"| {_f(r.cpu_ms_per_request)} "
            f"| {_ratio(r.cpu_ms_per_request, floor.cpu_ms_per_request if floor else None)} "
            f"| {_f(r.rps, 0)} | {_f(r.cpu_ms_per_request_long)} | {_f(r.latency_p50)} |"
        )
    lines += ["", "## What this run says", ""]
    lines += [f"- {line}" for line in recommendation(rows)]
    for name, caveats in CAVEATS.items():
        lines += ["", f"## Before an adapter adopts {name}", ""]
        lines += [f"- {line}" for line in caveats]
    errors = [
        f"ERRORS on {s.name}, round {r.index + 1}, {m.scenario}: {m.errors}/{m.requests}: "
        + "; ".join(m.first_errors)
        for s in comparison.subjects
        for r in s.rounds
        for m in r.measurements.values()
        if m.errors
    ]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"
