"""ChatEvent / ChatResponse -> OpenAI chat.completion(.chunk) JSON, encoded as bytes.

The per-stream constant part of every chunk (id, object, created, model) is encoded once;
a content delta then costs one string escape and a few byte concatenations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as _quote

import orjson

from gateway.errors import error_object
from gateway.openai_usage import usage_object
from imesh.errors import MeshError
from imesh.v1 import chat_service_pb2, events_pb2

_dumps = json.JSONEncoder(separators=(",", ":")).encode

FINISH_REASONS: dict[int, str] = {
    events_pb2.FINISH_REASON_UNSPECIFIED: "stop",
    events_pb2.FINISH_REASON_STOP: "stop",
    events_pb2.FINISH_REASON_LENGTH: "length",
    events_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    events_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
}
_FINISH_TAILS: dict[int, bytes] = {
    k: b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"' + v.encode() + b'"}]}\n\n'
    for k, v in FINISH_REASONS.items()
}
_ROLE_TAIL = (
    b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
    b'"finish_reason":null}]}\n\n'
)
_CONTENT_OPEN = b'{"index":0,"delta":{"content":'
_DELTA_CLOSE = b'},"logprobs":null,"finish_reason":null}]}\n\n'
_TOOLS_OPEN = b'{"index":0,"delta":{"tool_calls":['
_TOOLS_CLOSE = b']},"logprobs":null,"finish_reason":null}]}\n\n'
DONE_FRAME = b"data: [DONE]\n\n"


def completion_body(
    resp: chat_service_pb2.ChatResponse, completion_id: str, model: str, created: int
) -> bytes:
    """The non-streaming `chat.completion` object for a unary ChatResponse."""
    msg = resp.message
    text = "".join(part.text for part in msg.content if part.WhichOneof("part") == "text")
    message: dict[str, object] = {
        "role": "assistant",
        "content": text if text or not msg.tool_calls else None,
        "refusal": None,
    }
    if msg.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for call in msg.tool_calls
        ]
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(resp.finish_reason, "stop"),
            }
        ],
        "usage": usage_object(resp.usage),
    }
    # orjson: compact like _dumps, several times faster; text stays UTF-8 (not \u-escaped).
    return orjson.dumps(body)


def error_frame(err: MeshError) -> bytes:
    """The SSE frame that ends a failed stream; the openai SDK raises APIError on it."""
    return b'data: {"error":' + _dumps(error_object(err)).encode() + b"}\n\n"


class ChunkEncoder:
    """Encodes one stream's events as SSE `data:` frames of `chat.completion.chunk`.

    `frame(event)` returns the bytes to send now (empty when the event sends nothing yet:
    usage is held until the end, where OpenAI puts it); `tail()` the closing bytes.
    """

    __slots__ = ("_head", "_include_usage", "_usage", "errored")

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool):
        self._head = (
            b'data: {"id":'
            + _quote(completion_id).encode()
            + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + _quote(model).encode()
            + b',"choices":['
        )
        self._include_usage = include_usage
        self._usage: events_pb2.Usage | None = None
        # True once an error frame went out; the stream must then end without [DONE].
        self.errored = False

    def frames(self, batch: Sequence[events_pb2.ChatEvent]) -> bytes:
        """One write's worth: the frames of every event of a batch, joined."""
        if len(batch) == 1:
            return self.frame(batch[0])
        return b"".join([self.frame(event) for event in batch])

    def frame(self, event: events_pb2.ChatEvent) -> bytes:
        kind = event.WhichOneof("event")
        if kind == "content":
            return self._head + _CONTENT_OPEN + _quote(event.content.text).encode() + _DELTA_CLOSE
        if kind == "tool_call":
            return self._head + _TOOLS_OPEN + _tool_call_delta(event.tool_call) + _TOOLS_CLOSE
        if kind == "start":
            return self._head + _ROLE_TAIL
        if kind == "finish":
            return self._head + _FINISH_TAILS.get(event.finish.reason, _FINISH_TAILS[0])
        if kind == "usage":
            self._usage = event.usage
            return b""
        if kind == "error":
            failure = event.error
            if failure.HasField("partial_usage"):
                self._usage = failure.partial_usage
            return self._usage_frame() + self.error(MeshError.from_event(failure))
        return b""

    def error(self, err: MeshError) -> bytes:
        """The frame that reports a mid-stream failure (sent at most once)."""
        if self.errored:
            return b""
        self.errored = True
        return error_frame(err)

    def tail(self) -> bytes:
        """What closes a successful stream: the usage chunk when asked for, then [DONE]."""
        return self._usage_frame() + DONE_FRAME

    def _usage_frame(self) -> bytes:
        if not self._include_usage or self._usage is None:
            return b""
        usage, self._usage = self._usage, None
        return self._head + b'],"usage":' + _dumps(usage_object(usage)).encode() + b"}\n\n"


def _tool_call_delta(delta: events_pb2.ToolCallDelta) -> bytes:
    if delta.id:
        return _dumps(
            {
                "index": delta.index,
                "id": delta.id,
                "type": "function",
                "function": {"name": delta.name, "arguments": delta.arguments_delta},
            }
        ).encode()
    return (
        b'{"index":'
        + str(delta.index).encode()
        + b',"function":{"arguments":'
        + _quote(delta.arguments_delta).encode()
        + b"}}"
    )


def models_body(models: chat_service_pb2.ListModelsResponse, created: int) -> bytes:
    """`GET /v1/models`: aliases first (what callers should use), then deployments."""
    return _dumps({"object": "list", "data": model_objects(models, created)}).encode()


def model_objects(
    models: chat_service_pb2.ListModelsResponse, created: int
) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [
        {"id": alias.name, "object": "model", "created": created, "owned_by": "imesh"}
        for alias in models.aliases
    ]
    out.extend(
        {"id": d.name, "object": "model", "created": created, "owned_by": d.provider or "imesh"}
        for d in models.deployments
    )
    return out


def model_body(model: dict[str, object]) -> bytes:
    return _dumps(model).encode()
