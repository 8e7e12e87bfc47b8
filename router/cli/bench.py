"""`imesh bench`: the mesh beside a zero baseline, floors and LiteLLM, measured in one run."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from router.cli._common import describe, run

if TYPE_CHECKING:
    from bench.plan import BenchSettings

T = TypeVar("T")
DEFAULT_OUT = "bench/results"

EPILOG = """\
examples:
  imesh bench                         # everything, written to bench/results/ (under 10 min)
  imesh bench --no-transports --rounds 1 --no-litellm     # a quick look at the mesh
  imesh bench --mesh-modes default    # skip the tracing-on and all-off runs of the mesh
every server runs in its own process on 127.0.0.1 (free ports) and is stopped at the end;
LiteLLM is installed once into its own cached virtual environment outside the repo.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure the mesh against a zero baseline, the floors of a Python hop, LiteLLM",
        description=describe(
            "Start a zero-delay OpenAI-compatible upstream and, each in its own process in "
            "front of it: a minimal aiohttp relay, a bare grpc.aio hop, `imesh up` (in each "
            "observability mode) and LiteLLM's proxy. Measure them in interleaved rounds "
            "(non-streaming at concurrency 1 and N, streaming TTFT, token streaming), write "
            "LATEST.md and LATEST.json with the issue's targets marked met or missed, then "
            "compare httpx transports as relays (transports.md)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    bench.add_argument("--requests", type=int, default=150, help="per one-at-a-time scenario (150)")
    bench.add_argument(
        "--throughput-requests", type=int, default=300, help="at --concurrency (300)"
    )
    bench.add_argument("--concurrency", type=int, default=32, help="non-streaming (32)")
    bench.add_argument("--tokens", type=int, default=16, help="tokens per short answer (16)")
    bench.add_argument(
        "--stream-tokens", type=int, default=256, help="tokens per streamed answer (256)"
    )
    bench.add_argument("--streams", type=int, default=16, help="concurrent token streams (16)")
    bench.add_argument("--warmup", type=int, default=20, help="warm-up calls per scenario (20)")
    bench.add_argument(
        "--mesh-modes",
        default="default,tracing,off",
        help="observability modes to run the mesh in (default,tracing,off)",
    )
    bench.add_argument("--out", default=DEFAULT_OUT, help=f"results folder ({DEFAULT_OUT})")
    bench.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    bench.add_argument(
        "--no-litellm", action="store_true", help="skip LiteLLM (its targets: not measured)"
    )
    bench.add_argument(
        "--no-transports", action="store_true", help="skip the httpx transport comparison"
    )
    bench.add_argument(
        "--compare-to",
        metavar="JSON",
        help="an earlier LATEST.json: add a before/after table to LATEST.md",
    )
    bench.add_argument(
        "--profile",
        action="store_true",
        help="also profile the mesh with py-spy in an extra round (profile-mesh-rest.md)",
    )
    bench.add_argument(
        "--pool",
        action="store_true",
        help="only the GPU pool's transports: real vLLM engines on CPU over HTTP and native "
        "gRPC, direct against through the mesh (pool-transports.md; needs `make vllm-env`)",
    )
    bench.set_defaults(func=run_bench)


def settings_of(args: argparse.Namespace) -> BenchSettings:
    """The settings the flags ask for; ValueError naming a bad one."""
    from bench.mesh_modes import parse_modes
    from bench.plan import BenchSettings

    return BenchSettings(
        requests=args.requests,
        throughput_requests=args.throughput_requests,
        concurrency=args.concurrency,
        tokens=args.tokens,
        stream_tokens=args.stream_tokens,
        streams=args.streams,
        rounds=args.rounds,
        warmup=args.warmup,
        pin=not args.no_pin,
        profile=args.profile,
        litellm=not args.no_litellm,
        mesh_modes=parse_modes(args.mesh_modes),
    )


def run_bench(args: argparse.Namespace) -> int:
    from bench import compare
    from bench.markdown import to_markdown
    from bench.processes import BenchError
    from bench.scenario import run_scenario
    from bench.targets import LITELLM, evaluate
    from bench.transports import run_transports, transports_markdown

    try:
        settings = settings_of(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.pool:
        return _run_pool(args, out)
    # Read before the run: the file compared to is often the LATEST.json this run replaces.
    try:
        before = compare.load_figures(args.compare_to) if args.compare_to else None
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: cannot read --compare-to {args.compare_to}: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    ok = True
    try:
        report = run(_cancellable(lambda: run_scenario(settings, _log)))
        results = evaluate(report.figures())
        latest = to_markdown(report, results)
        if before is not None:
            latest += "\n" + compare.to_markdown(*before, report)
        (out / "LATEST.md").write_text(latest, encoding="utf-8")
        report.write_json(out / "LATEST.json", {"targets": [asdict(r) for r in results]})
        for key, text in report.profiles.items():
            (out / f"profile-{key}.md").write_text(text, encoding="utf-8")
        print(to_markdown(report, results))
        # LiteLLM is a peer: its own failures are reported, they do not fail the run.
        ok = all(s.errors == 0 for s in report.subjects if s.key != LITELLM)
        if not args.no_transports:
            comparison = run(_cancellable(lambda: run_transports(settings, _log)))
            (out / "transports.md").write_text(transports_markdown(comparison), encoding="utf-8")
            comparison.write_json(out / "transports.json")
            print(transports_markdown(comparison))
            ok = ok and comparison.all_ok
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:  # SIGTERM: every process was stopped on the way out
        print("bench: terminated", file=sys.stderr)
        return 143
    print(f"results in {out}/; bench took {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


def _run_pool(args: argparse.Namespace, out: Path) -> int:
    from bench.pool_transports import pool_transports_markdown, run_pool_transports

    rounds, requests = args.rounds, min(args.requests, 20)
    figures = run(
        _cancellable(
            lambda: run_pool_transports(
                rounds=rounds, requests=requests, warmup=min(args.warmup, 3), log=_log
            )
        )
    )
    text = pool_transports_markdown(figures, rounds=rounds, requests=requests)
    (out / "pool-transports.md").write_text(text, encoding="utf-8")
    print(text)
    return 0 if all(f.errors == 0 for f in figures.values()) else 1


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _cancellable(work: Callable[[], Awaitable[T]]) -> T:
    """`work`, cancelled by SIGTERM (Ctrl-C already cancels it) so its cleanup runs."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await work()
