"""The harness's own logic: an incomplete answer is an error, LiteLLM's cached environment is
reused only when finished, the transport verdicts follow the figures, the CLI takes its flags."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.litellm_env import REQUIREMENT, LiteLLMEnv
from bench.load import Call, Sample
from bench.measure import Subject, measure
from bench.mesh_modes import MeshMode
from bench.plan import BenchSettings, Scenario, scenarios
from bench.processes import ServerProcess
from bench.transports import AGGREGATE, Row, recommendation
from router.cli.bench import settings_of
from router.cli.main import build_parser


class _ShortTarget:
    """Answers every call with usage for 4 tokens and the text of `chars` characters."""

    def __init__(self, chars: int) -> None:
        self.chars = chars

    async def call(self, call: Call) -> Sample:
        return Sample(0.001, None, 5, 4, self.chars)

    async def aclose(self) -> None:
        pass


@pytest.fixture
def idle_process() -> Iterator[ServerProcess]:
    proc = ServerProcess("idle", [sys.executable, "-c", "import time; time.sleep(30)"], cpu=None)
    yield proc
    proc.stop()


@pytest.mark.parametrize(("chars", "errors"), [(12, 0), (9, 5)])
async def test_an_answer_missing_text_counts_as_an_error(
    idle_process: ServerProcess, chars: int, errors: int
) -> None:
    subject = Subject("s", "s", "d", "idle", _ShortTarget(chars), {"idle": idle_process})
    settings = BenchSettings(tokens=4)
    m = await measure(subject, Scenario("latency", Call(False, 4), 5, 1), settings)
    assert (m.ok, m.errors) == (5 - errors, errors)
    if errors:
        assert m.first_errors[0] == "ValueError: 9 characters of text, sent 12"
    assert "idle" in m.cpu_s


def test_the_standard_plan_is_the_issues_four_scenarios() -> None:
    plan = scenarios(BenchSettings())
    assert [(s.name, s.call, s.requests, s.concurrency) for s in plan] == [
        ("latency", Call(False, 16), 150, 1),
        ("throughput", Call(False, 16), 300, 32),
        ("ttft", Call(True, 16), 150, 1),
        ("tokens", Call(True, None), 32, 16),
    ]
    assert plan[3].expected_tokens(BenchSettings()) == 256


def test_litellm_env_is_reused_only_once_its_install_finished(tmp_path: Path) -> None:
    env = LiteLLMEnv(tmp_path)
    assert env.path == tmp_path / "litellm-1.103.7"
    assert not env.installed()
    env.python.parent.mkdir(parents=True)
    env.python.touch()
    assert not env.installed()  # a venv whose install did not finish is installed again
    (env.path / ".installed").write_text("litellm[proxy]==0.1\n")
    assert not env.installed()
    (env.path / ".installed").write_text(REQUIREMENT + "\n")
    assert env.installed()
    assert env.ensure() == env.python


def test_transport_verdicts_follow_the_cheapest_figures() -> None:
    rows = [
        Row("httpx", 24.0, 1.7, 500, 1.8, 4.0),
        Row("httpx" + AGGREGATE, 26.0, 2.4, 130, 5.9, 9.0),
        Row("httpx-aiohttp", 8.0, 0.6, 340, 0.5, 4.0),
        Row("httpx-aiohttp" + AGGREGATE, 7.0, 0.3, 590, 1.8, 3.0),
    ]
    lines = recommendation(rows)
    assert lines[0].startswith("Streaming: **httpx-aiohttp**")
    assert lines[1].startswith("Non-streaming at concurrency 32: **httpx-aiohttp**")
    assert "1.41x" in lines[2]
    assert lines[2].endswith("a non-streaming upstream call is cheaper.")
    assert "0.50x" in lines[3]
    assert lines[3].endswith("streaming and aggregating is cheaper.")
    # The two transports disagree on the calling pattern: no verdict on it.
    assert lines[4] == (
        "**Recommendation from this run**: use **httpx-aiohttp** for providers on HTTP/1.1."
    )


def test_the_verdict_names_the_calling_pattern_when_every_transport_agrees() -> None:
    rows = [
        Row("httpx", 24.0, 1.7, 500, 1.8, 4.0),
        Row("httpx" + AGGREGATE, 26.0, 2.4, 130, 5.9, 9.0),
        Row("httpx-aiohttp", 6.0, 1.9, 340, 0.5, 4.0),
    ]
    assert recommendation(rows)[-1] == (
        "**Recommendation from this run**: streaming favours **httpx-aiohttp**, non-streaming "
        "**httpx**; serve a non-streaming caller with a non-streaming upstream call."
    )


def test_bench_subcommand_takes_its_flags_and_refuses_zero_rounds() -> None:
    args = build_parser().parse_args(
        ["bench", "--rounds", "2", "--no-pin", "--no-litellm", "--mesh-modes", "off"]
    )
    settings = settings_of(args)
    assert (settings.rounds, settings.pin, settings.litellm) == (2, False, False)
    assert settings.mesh_modes == (MeshMode.DEFAULT, MeshMode.OFF)
    assert args.func(build_parser().parse_args(["bench", "--rounds", "0"])) == 2
