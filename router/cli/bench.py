"""`imesh bench`: what the mesh adds over a zero-delay upstream measured in the same run."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import TYPE_CHECKING

from router.cli._common import describe, run

if TYPE_CHECKING:
    from bench.report import BenchReport
    from bench.scenario import BenchSettings

EPILOG = """\
examples:
  imesh bench                               # standard scenario, about a minute on 2 cores
  imesh bench --json bench.json             # also write every number as JSON
  imesh bench --requests 2000 --concurrency 64 --tokens 128
every server runs in its own process on 127.0.0.1 (free ports) and is stopped at the end.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure the mesh's own latency and throughput cost against its upstream",
        description=describe(
            "Start a zero-delay OpenAI-compatible upstream and `imesh up` in front of it, "
            "each in its own process on loopback; drive the upstream directly (the "
            "baseline), then the mesh's REST edge and its gRPC API the same way; print "
            "latency (p50/p90/p99), streaming time to first token, throughput and what the "
            "mesh adds over the baseline as a markdown table."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--requests", type=int, default=500, help="per measurement (500)")
    bench.add_argument(
        "--concurrency", type=int, default=32, help="for the throughput measurement (32)"
    )
    bench.add_argument("--tokens", type=int, default=16, help="completion tokens per answer (16)")
    bench.add_argument("--warmup", type=int, default=50, help="warm-up requests per path (50)")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    bench.add_argument(
        "--no-pin", action="store_true", help="do not pin the client and the servers to cores"
    )
    bench.add_argument(
        "--no-litellm", action="store_true", help="skip LiteLLM even when it is installed"
    )
    bench.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from bench.processes import BenchError
    from bench.report import to_markdown
    from bench.scenario import BenchSettings

    try:
        settings = BenchSettings(
            requests=args.requests,
            concurrency=args.concurrency,
            tokens=args.tokens,
            warmup=args.warmup,
            pin=not args.no_pin,
            litellm=not args.no_litellm,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        report = run(_bench(settings))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:  # SIGTERM: every process was stopped on the way out
        print("bench: terminated", file=sys.stderr)
        return 143
    print(to_markdown(report))
    if args.json:
        report.write_json(args.json)
        print(f"JSON: {args.json}")
    print(f"bench took {time.perf_counter() - started:.1f} s")
    return 0 if report.all_ok else 1


async def _bench(settings: BenchSettings) -> BenchReport:
    """The scenario, cancelled by SIGTERM (Ctrl-C already cancels it) so its cleanup runs."""
    from bench.scenario import run_scenario

    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_scenario(settings, lambda line: print(line, file=sys.stderr, flush=True))
