"""What every subcommand shares: config loading, the event loop, signals, addresses."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import Coroutine
from importlib import resources
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    from router.config import MeshConfig

T = TypeVar("T")
DEFAULT_ROUTER = "127.0.0.1:50051"


def default_router() -> str:
    return os.environ.get("IMESH_ROUTER") or DEFAULT_ROUTER


def add_router_arguments(parser: argparse.ArgumentParser) -> None:
    """--router and --api-key, for the commands that call a running router."""
    parser.add_argument(
        "--router",
        metavar="ADDR",
        default=default_router(),
        help="router gRPC address (default: $IMESH_ROUTER or 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("IMESH_API_KEY"),
        help="API key (default: $IMESH_API_KEY)",
    )


def default_config_path() -> str:
    """The shipped config of simulated providers (what `make run` serves)."""
    return str(resources.files("router").joinpath("default_config.yaml"))


def describe(text: str) -> str:
    """A subcommand's description wrapped for --help (the raw formatter keeps epilogs as typed)."""
    return textwrap.fill(text, 88)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `message` to stderr and exit with `code`, without a traceback."""
    print(message, file=sys.stderr)
    raise SystemExit(code)


def load_config_or_exit(path: str) -> MeshConfig:
    """The validated config; on a bad file, its message (every bad key named) and exit 2."""
    from router.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), 2)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def stop_signal() -> asyncio.Future[str]:
    """A future resolved with the name of the first SIGTERM or SIGINT received from now on.

    Install it before announcing listeners, so a supervisor's early SIGTERM drains too. The
    handlers stay until the loop closes: a second signal during the drain is ignored rather
    than killing the process mid-drain.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[str] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return received


def shown_address(listen: str, port: int) -> str:
    """`listen` with the port actually bound (it differs when `listen` asks for port 0)."""
    host = listen.rpartition(":")[0] or "127.0.0.1"
    return f"{host}:{port}"
