"""What every subcommand shares: config loading, the event loop, signals, addresses."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import os
import signal
import socket
import sys
import textwrap
from collections.abc import Callable, Coroutine
from importlib import resources
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message

    from imesh.errors import MeshError
    from imesh.v1 import chat_service_pb2
    from router.config import MeshConfig

T = TypeVar("T")
DEFAULT_ROUTER = "127.0.0.1:50051"


def default_router() -> str:
    return os.environ.get("IMESH_ROUTER") or DEFAULT_ROUTER


def print_message(message: Message, *, as_json: bool, render: Callable[[Any], str]) -> None:
    """A response as protobuf JSON (--json) or as the command's own table."""
    if as_json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(message, preserving_proto_field_name=True))
    else:
        print(render(message))


def add_router_address(parser: argparse.ArgumentParser) -> None:
    """--router: where a running router's gRPC API is."""
    parser.add_argument(
        "--router",
        metavar="ADDR",
        default=default_router(),
        help="router gRPC address (default: $IMESH_ROUTER or 127.0.0.1:50051)",
    )


def add_router_arguments(parser: argparse.ArgumentParser, *, api_key: bool = True) -> None:
    """--router, the TLS files to reach it with (`router_credentials` reads them) and, unless
    the command sends another key, --api-key: for the commands that call a running router."""
    add_router_address(parser)
    parser.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=os.environ.get("IMESH_ROUTER_CA"),
        help="CA that signed the router's certificate: call it over TLS "
        "(default: $IMESH_ROUTER_CA; none: plaintext, for a router on loopback)",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        default=os.environ.get("IMESH_ROUTER_CERT"),
        help="this caller's certificate, for a router that requires mutual TLS "
        "(default: $IMESH_ROUTER_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        metavar="PEM",
        default=os.environ.get("IMESH_ROUTER_KEY"),
        help="the key of --tls-cert (default: $IMESH_ROUTER_KEY)",
    )
    if api_key:
        parser.add_argument(
            "--api-key",
            metavar="KEY",
            default=os.environ.get("IMESH_API_KEY"),
            help="API key (default: $IMESH_API_KEY)",
        )


def router_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from the arguments `add_router_arguments` added; None (plaintext)
    without --tls-ca. A file that cannot be read, or a certificate without its key, ends
    the process (exit 2) with a line naming it."""
    if not args.tls_ca:
        if args.tls_cert or args.tls_key:
            fail("error: --tls-cert and --tls-key need --tls-ca (the router's CA)", 2)
        return None
    from imesh.client import tls_credentials

    try:
        return tls_credentials(args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    except ValueError:
        fail("error: --tls-cert and --tls-key go together: give both or neither", 2)
    except OSError as exc:
        fail(f"error: {exc.filename} cannot be read: {exc.strerror}", 2)


def default_config_path() -> str:
    """The shipped config of simulated providers (what `make run` serves)."""
    return str(resources.files("router").joinpath("default_config.yaml"))


def describe(text: str) -> str:
    """A subcommand's description wrapped for --help (the raw formatter keeps epilogs as typed)."""
    return textwrap.fill(text, 88)


def error_line(err: MeshError) -> str:
    """What a client command prints for a failed call, saying what to do when it can."""
    from imesh.errors import Reason

    line = f"error: {err}"
    if err.reason in (Reason.MISSING_API_KEY, Reason.INVALID_API_KEY):
        line += " (give the key with --api-key KEY or the IMESH_API_KEY variable)"
    return line


def model_names(models: chat_service_pb2.ListModelsResponse) -> str:
    """The names a caller may ask for: aliases first, then deployments, as configured."""
    names = [a.name for a in models.aliases] + [d.name for d in models.deployments]
    return ", ".join(names) or "none"


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


def usable_listen(what: str, listen: str) -> str:
    """`listen` when it is HOST:PORT and the port can be bound now; else one line naming
    the address, and exit 2 (before anything started: no server left half up)."""
    from gateway.settings import parse_listen

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        fail(f"error: {what} cannot listen on {listen!r}: {exc}", 2)
    if port == 0:
        return listen
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            # As the servers bind: a port held only by closed connections is usable.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        fail(f"error: {what} cannot listen on {listen}: {why or exc}", 2)
    return listen


# How long a worker thread (parsing or counting a large request) may keep the GIL from
# the event loop: Python's default is 5 ms per hand-over, and one request waits for several.
GIL_SWITCH_S = 0.001


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed, else on asyncio's default loop."""
    sys.setswitchinterval(GIL_SWITCH_S)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def freeze_startup_heap() -> None:
    """Once a server is up: every object alive now (modules, config, clients, servers,
    about 80,000 in `imesh up`) leaves the garbage collector's generations for good, so a
    full collection walks only what requests allocate. Measured on the bench's mesh (A/B,
    interleaved): a full collection 47 -> 5.5 ms of CPU; CPU per non-streaming request at
    concurrency 32 8-12% lower, per relayed token about 7%."""
    gc.freeze()


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
