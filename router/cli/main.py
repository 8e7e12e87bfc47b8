"""Entry point of the `imesh` command: builds the parser and runs one subcommand."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from router.cli import adapter, bench, chat, gateway, keys, models, pool, replica_agent, up, usage
from router.request_log import BufferedLineHandler, JsonFormatter

DESCRIPTION = """\
inference-mesh: a gRPC-native LLM inference mesh.

Run it:      imesh up | imesh router | imesh adapter NAME | imesh gateway
Talk to it:  imesh chat "prompt" | imesh models
Tenants:     imesh keys create|list|revoke|rotate | imesh usage
GPU pool:    imesh pool serve|list|drain | imesh replica-agent --vllm URL
Measure it:  imesh bench
Logging:     IMESH_LOG_LEVEL=DEBUG|INFO|WARNING|ERROR (services default to INFO),
             IMESH_LOG_FORMAT=text|json (default: text on a terminal, else JSON lines)
Telemetry:   IMESH_METRICS=0 turns metrics off; OTEL_* variables turn tracing on
"""
EPILOG = """\
examples:
  imesh up                          # whole mesh on a laptop, simulated providers
  imesh chat "What is a circuit breaker?"
  imesh models
run `imesh COMMAND --help` for each command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imesh",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (up, adapter, gateway, chat, models, bench, pool, replica_agent, keys, usage):
        module.register(commands)
    return parser


# Commands that talk to a mesh print their own results; only their warnings are logged.
_QUIET_COMMANDS = frozenset({"chat", "models", "bench", "keys", "usage"})
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# How long an INFO line logged on the event loop may wait to be written with others.
LOG_DELAY_S = 0.05


def configure_logging(command: str) -> None:
    """INFO for services (breaker transitions, drains, one line per request), WARNING for
    clients; the IMESH_LOG_LEVEL variable (DEBUG, INFO, WARNING, ERROR) overrides both.
    Lines are human text on a terminal and JSON objects otherwise (a collector's input);
    IMESH_LOG_FORMAT=text|json overrides that."""
    default = "WARNING" if command in _QUIET_COMMANDS else "INFO"
    level = os.environ.get("IMESH_LOG_LEVEL", default).upper()
    if level not in logging.getLevelNamesMapping():
        print(f"IMESH_LOG_LEVEL: unknown level {level!r}, using {default}", file=sys.stderr)
        level = default
    # One write per batch of lines, not per line: a service logs a line per request, and
    # each write wakes the log reader (router.request_log.BufferedLineHandler).
    handler = BufferedLineHandler(sys.stderr, delay_s=LOG_DELAY_S)
    if _log_format() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    # Per-line work nobody reads (no format here names thread or process): the logging
    # module's documented switches, since services log one line per request at INFO.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # httpx logs every request at INFO: per-request formatting on the hot path, and noise.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.getLevelName(level), logging.WARNING))


def _log_format() -> str:
    default = "text" if sys.stderr.isatty() else "json"
    chosen = os.environ.get("IMESH_LOG_FORMAT", default).lower()
    if chosen not in ("text", "json"):
        print(f"IMESH_LOG_FORMAT: unknown format {chosen!r}, using {default}", file=sys.stderr)
        chosen = default
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.command)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
