"""`imesh bench`: the scenario's machinery end to end (tiny numbers), the upstream's wire
format, the percentile maths and the CLI registration. No timing thresholds: machines vary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from bench.report import percentile, to_markdown
from bench.scenario import BenchSettings, run_scenario
from bench.upstream import ChatUpstream
from router.cli.main import build_parser

TINY = BenchSettings(requests=20, concurrency=4, tokens=8, warmup=4, pin=False, litellm=False)
PATHS = ["upstream direct (baseline)", "mesh REST edge", "mesh gRPC (imesh.Client)"]


@pytest.mark.slow
async def test_scenario_measures_every_path_and_stops_every_process(tmp_path: Path) -> None:
    log: list[str] = []
    report = await run_scenario(TINY, log.append)

    assert [p.name for p in report.paths] == PATHS
    baseline = report.paths[0]
    for path in report.paths:
        for m, stream, concurrency in zip(
            path.measurements, (False, True, False), (1, 1, 4), strict=True
        ):
            assert (m.ok, m.errors, m.stream, m.concurrency) == (20, 0, stream, concurrency)
            assert m.latency_ms is not None
            assert m.latency_ms.p50 <= m.latency_ms.p90 <= m.latency_ms.p99
            assert m.rps > 0
            # The mesh reports the upstream's own usage, token for token.
            assert m.completion_tokens == [8]
            assert m.prompt_tokens == baseline.latency.prompt_tokens
        assert path.latency.ttft_ms is None
        ttft = path.ttft.ttft_ms
        assert ttft is not None
        assert ttft.p50 <= ttft.p99
    edge, grpc_path = report.paths[1], report.paths[2]
    assert edge.latency.edge_overhead_ms is not None
    assert grpc_path.latency.edge_overhead_ms is None
    assert baseline.throughput.cpu_ms_per_request.keys() >= {"client", "upstream"}
    assert edge.throughput.cpu_ms_per_request.keys() >= {"client", "mesh", "upstream"}
    assert [c.path for c in report.comparisons] == PATHS[1:]
    assert report.all_ok
    assert report.skipped == {"litellm": "disabled (--no-litellm)"}

    for name, pid in report.environment["processes"].items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped
        assert name in {"upstream", "mesh"}

    out = tmp_path / "bench.json"
    report.write_json(out)
    data = json.loads(out.read_text())
    assert [p["name"] for p in data["paths"]] == PATHS
    assert data["paths"][1]["latency"]["completion_tokens"] == [8]
    assert data["settings"]["requests"] == 20
    table = to_markdown(report)
    assert table.startswith("| path |")
    assert all(f"| {name} |" in table for name in PATHS)
    assert "litellm: disabled (--no-litellm), skipped" in table


def _upstream(tokens: int) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=ChatUpstream(tokens))
    return httpx.AsyncClient(transport=transport, base_url="http://upstream")


async def test_upstream_streams_one_chunk_per_token_then_usage_then_done() -> None:
    body = {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "three words here"}],
    }
    async with _upstream(4) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [f.removeprefix("data: ") for f in response.text.split("\n\n") if f]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    texts = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert texts == [" hi"] * 4
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (3, 4, 7)


async def test_upstream_answer_stops_at_max_tokens_with_finish_reason_length() -> None:
    body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    async with _upstream(5) as http:
        response = await http.post("/v1/chat/completions", json=body)
        missing = await http.post("/v1/chat/completions", json={"model": "m"})
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == " hi hi"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 2
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_bench_subcommand_takes_its_flags_and_refuses_zero_requests() -> None:
    args = build_parser().parse_args(
        ["bench", "--requests", "20", "--concurrency", "4", "--no-pin", "--json", "out.json"]
    )
    assert (args.requests, args.concurrency, args.no_pin, args.json) == (20, 4, True, "out.json")
    assert args.func(build_parser().parse_args(["bench", "--requests", "0"])) == 2
