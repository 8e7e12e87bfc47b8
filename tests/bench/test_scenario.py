"""`imesh bench` end to end on a tiny run: every subject measured in every round, every answer
complete, every process stopped. No timing thresholds: machines vary."""

from __future__ import annotations

import os

import pytest

from bench.mesh_modes import MeshMode
from bench.plan import BenchSettings
from bench.scenario import run_scenario
from bench.targets import DIRECT, GRPC_HOP, MESH, MESH_GRPC, RELAY, Verdict, evaluate
from bench.transports import AGGREGATE, FLOOR, run_transports, transports_markdown

TINY = BenchSettings(
    requests=6,
    throughput_requests=12,
    concurrency=4,
    tokens=4,
    stream_tokens=16,
    streams=2,
    stream_waves=1,
    rounds=2,
    warmup=2,
    pin=False,
    litellm=False,
    mesh_modes=(MeshMode.DEFAULT,),
)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_scenario_measures_every_subject_each_round_and_stops_every_process() -> None:
    log: list[str] = []
    report = await run_scenario(TINY, log.append)

    assert [s.key for s in report.subjects] == [DIRECT, RELAY, GRPC_HOP, MESH, MESH_GRPC]
    for subject in report.subjects:
        assert [r.index for r in subject.rounds] == [0, 1]
        for r in subject.rounds:
            assert list(r.measurements) == ["latency", "throughput", "ttft", "tokens"]
            for m in r.measurements.values():
                assert (m.ok, m.errors) == (m.requests, 0), m.first_errors
            assert r.measurements["tokens"].tokens == 2 * 16
            assert r.measurements["latency"].completion_tokens == [4]
            assert r.rss_after is not None
        f = subject.figures()
        assert f.cpu_us_per_token is not None
        assert f.cpu_us_per_token > 0
    assert report.all_ok
    assert report.skipped == {"litellm": "disabled (--no-litellm)"}
    verdicts = [r.verdict for r in evaluate(report.figures())]
    assert verdicts[1] is verdicts[3] is Verdict.NOT_MEASURED  # the LiteLLM ratios
    # CPU, gRPC and RSS are always judged; the added-latency ratios need the relay to add
    # more than nothing, which a tiny run on a busy machine may not show.
    assert Verdict.NOT_MEASURED not in (verdicts[0], verdicts[2], verdicts[6], verdicts[7])

    assert set(report.environment["processes"]) == {"upstream", "relay", "grpc-hop", "mesh"}
    for pid in report.environment["processes"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_transport_comparison_measures_every_candidate_and_writes_a_verdict() -> None:
    comparison = await run_transports(TINY)

    names = [r.name for r in comparison.rows()]
    assert names == [
        FLOOR,
        "httpx",
        "httpx" + AGGREGATE,
        "httpx-sharded",
        "httpx-aiohttp",
        "httpx-aiohttp" + AGGREGATE,
        "httpx-curl-cffi",
    ]
    assert comparison.all_ok
    assert all(r.cpu_us_per_token is not None for r in comparison.rows())
    text = transports_markdown(comparison)
    assert "Streaming: **" in text
    assert "Non-streaming caller over httpx-aiohttp:" in text
