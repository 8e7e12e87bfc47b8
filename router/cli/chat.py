"""`imesh chat "prompt"`: ask the mesh one question, stream the answer, report what it cost."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from router.cli._common import (
    add_router_arguments,
    describe,
    error_line,
    fail,
    model_names,
    router_credentials,
    run,
)

if TYPE_CHECKING:
    from imesh.api import CallContext
    from imesh.client import Client
    from imesh.v1 import chat_pb2, chat_service_pb2, events_pb2

EPILOG = """\
examples:
  imesh chat "Why is the sky blue?"
  imesh chat --model smart --system "Answer in one sentence." "What is gRPC?"
  imesh chat --max-tokens 20 --no-stream "Summarise HTTP/2"
  echo "a long question" | imesh chat -
the answer goes to stdout; deployment, tokens, cost and timings go to stderr.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "chat",
        help="send one prompt and stream the answer",
        description=describe(
            "Send one prompt through the router and stream the answer to stdout "
            "as it arrives; then print the deployment, tokens, cost and timings to stderr."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prompt", help='the prompt ("-" reads it from stdin)')
    add_router_arguments(parser)
    parser.add_argument(
        "--model",
        help="alias or deployment (default: the router's first alias; see `imesh models`)",
    )
    parser.add_argument("--system", metavar="TEXT", help="system prompt")
    parser.add_argument("--max-tokens", metavar="N", type=int, help="completion token limit")
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=float, default=120.0, help="deadline (120)"
    )
    parser.add_argument(
        "--no-stream", action="store_true", help="wait for the whole answer (unary Chat)"
    )
    parser.set_defaults(func=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    from imesh.client import system, user
    from imesh.v1 import chat_pb2

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.max_tokens is not None and args.max_tokens < 1:
        fail("--max-tokens must be at least 1", 2)
    messages = [system(args.system)] if args.system else []
    messages.append(user(prompt))
    request = chat_pb2.ChatInput(
        model=args.model or "", messages=messages, max_tokens=args.max_tokens
    )
    return run(_chat(args, request))


@dataclass
class _Summary:
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    deployment: str = ""
    provider_model: str = ""
    finish: str = ""
    usage: events_pb2.Usage | None = None

    def lines(self) -> list[str]:
        total_ms = (time.perf_counter() - self.started) * 1000
        ttft = f"{(self.first_token - self.started) * 1000:.0f} ms" if self.first_token else "n/a"
        out = [f"deployment: {self.deployment or '?'} ({self.provider_model or '?'})"]
        if self.usage is not None:
            u = self.usage
            source = "estimated" if u.estimated else "reported"
            out.append(
                f"tokens: prompt {u.prompt_tokens}, completion {u.completion_tokens}, "
                f"cached {u.cached_tokens} ({source})"
            )
            out.append(f"cost: {dollars(u.cost_micros)}")
        if self.finish:
            out.append(f"finish: {self.finish}")
        out.append(f"ttft: {ttft}, total: {total_ms:.0f} ms")
        return out


def dollars(micros: int) -> str:
    """Integer micro-dollars as exact dollars: 123 -> "$0.000123"."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}${whole}.{frac:06d}"


async def _chat(args: argparse.Namespace, request: chat_pb2.ChatInput) -> int:
    from imesh.api import CallContext
    from imesh.client import Client
    from imesh.errors import MeshError, Reason

    summary = _Summary()
    ctx = CallContext(timeout=args.timeout)
    client = Client(args.router, api_key=args.api_key, credentials=router_credentials(args))
    try:
        if not request.model:
            request.model = await _first_alias(client, ctx)
        if args.no_stream:
            _print_response(await client.chat(request, ctx), summary)
        else:
            async for event in client.chat_stream(request, ctx):
                _print_event(event, summary)
    except MeshError as err:
        sys.stdout.write("\n" if summary.first_token else "")
        line = error_line(err)
        if err.reason is Reason.MODEL_NOT_FOUND:
            line += f"; models: {await _known_models(client, ctx)}"
        fail(line)
    finally:
        await client.aclose()
    sys.stdout.write("\n")
    sys.stdout.flush()
    print("\n".join(summary.lines()), file=sys.stderr)
    return 0


async def _first_alias(client: Client, ctx: CallContext) -> str:
    """The model `imesh chat` asks for when none is given: the config's first alias."""
    models = await client.list_models(ctx)
    if models.aliases:
        return models.aliases[0].name
    fail(f"error: no --model given and the router has no alias; models: {model_names(models)}")


async def _known_models(client: Client, ctx: CallContext) -> str:
    from imesh.errors import MeshError

    try:
        return model_names(await client.list_models(ctx))
    except MeshError:
        return "unknown (see `imesh models`)"


def _print_event(event: events_pb2.ChatEvent, summary: _Summary) -> None:
    from imesh.v1 import events_pb2

    kind = event.WhichOneof("event")
    if kind == "start":
        summary.deployment = event.start.deployment
        summary.provider_model = event.start.provider_model
    elif kind == "content" or kind == "tool_call":
        summary.first_token = summary.first_token or time.perf_counter()
        if kind == "content":
            sys.stdout.write(event.content.text)
        else:
            delta = event.tool_call
            if delta.name:
                sys.stdout.write(f"\n[tool call {delta.name}] ")
            sys.stdout.write(delta.arguments_delta)
        sys.stdout.flush()
    elif kind == "usage":
        summary.usage = event.usage
    elif kind == "finish":
        summary.finish = _finish_name(event.finish.reason)
    elif kind == "error" and event.error.HasField("partial_usage"):
        summary.usage = events_pb2.Usage()
        summary.usage.CopyFrom(event.error.partial_usage)


def _print_response(response: chat_service_pb2.ChatResponse, summary: _Summary) -> None:
    summary.deployment = response.deployment
    summary.provider_model = response.provider_model
    summary.usage = response.usage
    summary.finish = _finish_name(response.finish_reason)
    sys.stdout.write("".join(p.text for p in response.message.content if p.HasField("text")))
    for call in response.message.tool_calls:
        sys.stdout.write(f"\n[tool call {call.name}] {call.arguments_json}")


def _finish_name(reason: events_pb2.FinishReason.ValueType) -> str:
    from imesh.v1 import events_pb2

    return events_pb2.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()
