"""A zero-delay OpenAI-compatible upstream: raw ASGI on uvicorn, run as its own process.

`python -m bench.upstream --listen 127.0.0.1:0 --tokens N` serves
`POST /v1/chat/completions` (streaming and not, with usage) in the OpenAI wire format and
prints `upstream on http://HOST:PORT` once it accepts connections. Every answer is
`tokens` tokens long (fewer when the request's max_tokens asks for fewer), so the
benchmark measures the servers in between, not a model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import time
from collections.abc import Sequence
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

CHAT_PATH = "/v1/chat/completions"
# Tokens alternate between two words of one length: a stream that repeats one chunk looks
# like a model stuck in a loop to some clients (LiteLLM aborts it after 100 repeats).
TOKENS = (" hi", " ho")
TOKEN_CHARS = 3
READY_PREFIX = "upstream on "
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _error(message: str, kind: str = "invalid_request_error") -> bytes:
    return _dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


def parse_listen(listen: str) -> tuple[str, int]:
    """ "HOST:PORT" -> (host, port); raises ValueError naming the input."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host, int(port)


def answer_text(tokens: int) -> str:
    """The text of an answer `tokens` tokens long."""
    return "".join(TOKENS[i % 2] for i in range(tokens))


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def prompt_token_count(messages: Sequence[Any]) -> int:
    """Whitespace-separated words of the text in `messages`: deterministic, tokenizer-free."""
    words = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            words += sum(
                len(str(p.get("text", "")).split()) for p in content if isinstance(p, dict)
            )
    return max(words, 1)


class ChatUpstream:
    """The ASGI app. Per request it parses the body once and answers at once; ids come
    from a per-app counter, so they are unique within one run."""

    def __init__(self, tokens: int) -> None:
        if tokens < 1:
            raise ValueError("tokens must be >= 1")
        self._tokens = tokens
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != CHAT_PATH or scope["method"] != "POST":
            await _send(send, 404, _error(f"Unknown request URL: {scope['path']}"))
            return
        body = await _read_body(receive)
        try:
            request = json.loads(body)
            messages = request["messages"]
            model = str(request["model"])
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
        except (ValueError, KeyError, TypeError) as exc:
            await _send(send, 400, _error(f"bad request: {exc}"))
            return
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        tokens = self._tokens
        if isinstance(limit, int) and 0 < limit < tokens:
            tokens = limit
        finish = "length" if tokens < self._tokens else "stop"
        usage = usage_body(prompt_token_count(messages), tokens)
        head: dict[str, Any] = {
            "id": f"chatcmpl-bench{next(self._ids):012d}",
            "created": int(time.time()),
            "model": model,
        }
        if request.get("stream"):
            options = request.get("stream_options") or {}
            with_usage = bool(options.get("include_usage"))
            await self._stream(send, head, tokens, finish, usage if with_usage else None)
            return
        answer = {
            "id": head["id"],
            "object": "chat.completion",
            "created": head["created"],
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": answer_text(tokens),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": None,
        }
        await _send(send, 200, _dumps(answer))

    async def _stream(
        self,
        send: Send,
        head: dict[str, Any],
        tokens: int,
        finish: str,
        usage: dict[str, Any] | None,
    ) -> None:
        """One SSE frame per token, each its own write, as a real server produces them."""
        base = {
            "id": head["id"],
            "object": "chat.completion.chunk",
            "created": head["created"],
            "model": head["model"],
            "service_tier": "default",
            "system_fingerprint": None,
        }
        # OpenAI puts `usage: null` on every chunk but the last when usage was asked for.
        no_usage = {"usage": None} if usage is not None else {}

        def chunk(delta: dict[str, Any], reason: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            return b"data: " + _dumps({**base, "choices": [choice], **no_usage}) + b"\n\n"

        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        first = chunk({"role": "assistant", "content": "", "refusal": None}, None)
        await send({"type": "http.response.body", "body": first, "more_body": True})
        frames = [chunk({"content": text}, None) for text in TOKENS]
        for i in range(tokens):
            await send({"type": "http.response.body", "body": frames[i % 2], "more_body": True})
        tail = chunk({}, finish)
        if usage is not None:
            tail += b"data: " + _dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
        await send({"type": "http.response.body", "body": tail + _DONE, "more_body": False})


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts)
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _send(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _AnnouncingServer(uvicorn.Server):
    """uvicorn that prints the ready line once its socket accepts connections."""

    def __init__(self, config: uvicorn.Config, announce: str) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        print(self._announce, flush=True)


def serve(listen: str, tokens: int) -> None:
    """Serve until SIGINT/SIGTERM on uvloop + httptools, no access log."""
    host, port = parse_listen(listen)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # bound here so port 0 can be announced as the real port
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        ChatUpstream(tokens),
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="off",
        access_log=False,
        # Longer than any idle gap between the bench's rounds: a pooled connection the mock
        # closes just as a relay reuses it would be an error of the harness, not of the relay.
        timeout_keep_alive=300,
        log_level="warning",
    )
    server = _AnnouncingServer(config, f"{READY_PREFIX}http://{host}:{bound}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="zero-delay OpenAI-compatible upstream")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    parser.add_argument("--tokens", type=int, default=16, help="completion tokens per answer")
    args = parser.parse_args(argv)
    serve(args.listen, args.tokens)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
