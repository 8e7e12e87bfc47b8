"""Measuring one subject: warm-up, rounds of scenarios with the CPU its processes spent and
its server's memory, and a check of every answer against what the upstream sent."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from bench.load import Sample, Target, run_load
from bench.plan import BenchSettings, Scenario
from bench.processes import BenchError, ServerProcess, sched_times
from bench.report import CLIENT, Measurement, Round, SubjectReport
from bench.upstream import TOKEN_CHARS

RSS_SAMPLE_S = 0.05

Log = Callable[[str], None]


@dataclass(slots=True)
class Subject:
    """One path under measurement: a client target, the process it measures, and the other
    processes whose CPU is recorded beside it."""

    key: str
    name: str
    description: str
    server: str
    target: Target
    processes: Mapping[str, ServerProcess]
    rounds: list[Round] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def report(self) -> SubjectReport:
        return SubjectReport(
            self.key, self.name, self.description, self.server, self.rounds, self.notes
        )


async def warm_up(
    subject: Subject, plan: Sequence[Scenario], settings: BenchSettings, log: Log
) -> None:
    """`settings.warmup` calls of each scenario (streams: at least one wave); BenchError when
    every one of a scenario's calls failed."""
    if not settings.warmup:
        return
    log(f"{subject.name}: warm-up")
    for scenario in plan:
        n = max(settings.warmup, scenario.concurrency) if scenario.call.stream else settings.warmup
        warm = await run_load(partial(subject.target.call, scenario.call), n, scenario.concurrency)
        if not warm.samples:
            server = subject.processes[subject.server]
            raise BenchError(
                f"{subject.name}: every warm-up request failed: {warm.first_errors}\n"
                f"{server.name}'s stderr:\n{server.stderr_tail()}"
            )


async def measure_round(
    subjects: Sequence[Subject], index: int, plan: Sequence[Scenario], settings: BenchSettings
) -> None:
    """One round: each scenario of `plan` in turn, on every subject in turn, so the figures
    compared with each other are measured seconds apart, under the same machine load. Each
    subject gets a Round with its server's memory before, at its peak, and after."""
    servers = [s.processes[s.server] for s in subjects]
    idle = [server.rss_bytes() for server in servers]
    measurements: list[dict[str, Measurement]] = [{} for _ in subjects]
    async with contextlib.AsyncExitStack() as stack:
        peaks = [await stack.enter_async_context(_peak_rss(server)) for server in servers]
        for scenario in plan:
            for subject, taken in zip(subjects, measurements, strict=True):
                taken[scenario.name] = await measure(subject, scenario, settings)
    await asyncio.sleep(0.2)  # let the last responses' buffers go before "after"
    for i, subject in enumerate(subjects):
        subject.rounds.append(
            Round(index, measurements[i], idle[i], peaks[i](), servers[i].rss_bytes())
        )


async def measure(subject: Subject, scenario: Scenario, settings: BenchSettings) -> Measurement:
    """One scenario against one subject, with the CPU its processes and the load generator
    spent meanwhile and what each waited for a core; an answer whose token count or text does
    not match what the upstream sent is an error."""
    expected = scenario.expected_tokens(settings)

    async def checked() -> Sample:
        sample = await subject.target.call(scenario.call)
        if sample.completion_tokens != expected:
            raise ValueError(f"{sample.completion_tokens} completion tokens, sent {expected}")
        if sample.text_chars != TOKEN_CHARS * expected:
            raise ValueError(
                f"{sample.text_chars} characters of text, sent {TOKEN_CHARS * expected}"
            )
        return sample

    procs = {name: proc.sched_times for name, proc in subject.processes.items()}
    # The load generator's own run-queue wait: with its CPU, how busy it kept itself.
    procs[CLIENT] = partial(sched_times, os.getpid())
    before = {name: times() for name, times in procs.items()}
    run = await run_load(checked, scenario.requests, scenario.concurrency)
    spent: dict[str, float] = {}
    waited: dict[str, float] = {}
    for name, times in procs.items():
        start, end = before[name], times()
        if start is not None and end is not None:
            delta = end - start
            if name != CLIENT:  # its CPU is counted by run_load, for this process alone
                spent[name] = delta.cpu_s
            if delta.wait_s is not None:
                waited[name] = delta.wait_s
    return Measurement.of(scenario.name, run, scenario.call.stream, spent, waited)


@contextlib.asynccontextmanager
async def _peak_rss(proc: ServerProcess) -> AsyncIterator[Callable[[], int | None]]:
    """Samples `proc`'s resident memory while the block runs; yields the peak's getter."""
    seen: list[int] = []

    async def sample() -> None:
        while True:
            rss = proc.rss_bytes()
            if rss is not None:
                seen[:] = [max([rss, *seen])]
            await asyncio.sleep(RSS_SAMPLE_S)

    task = asyncio.create_task(sample())
    try:
        yield lambda: seen[0] if seen else None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
