"""The unary `chat.completion` body: OpenAI's shape, any text (non-ASCII included) intact."""

from __future__ import annotations

import json

from gateway.translate_response import completion_body
from imesh.v1 import chat_pb2, chat_service_pb2, events_pb2


def test_completion_body_is_compact_json_keeping_non_ascii_text_and_tool_calls() -> None:
    response = chat_service_pb2.ChatResponse(
        message=chat_pb2.Message(
            content=[chat_pb2.ContentPart(text="héllo ✓ "), chat_pb2.ContentPart(text='"ok"')],
            tool_calls=[chat_pb2.ToolCall(id="c1", name="f", arguments_json='{"a":1}')],
        ),
        finish_reason=events_pb2.FINISH_REASON_TOOL_CALLS,
        usage=events_pb2.Usage(prompt_tokens=3, completion_tokens=4),
    )
    raw = completion_body(response, "chatcmpl-1", "fast", 7)
    assert b": " not in raw
    assert b", " not in raw
    body = json.loads(raw)
    assert list(body) == ["id", "object", "created", "model", "choices", "usage"]
    [choice] = body["choices"]
    assert choice["message"]["content"] == 'héllo ✓ "ok"'
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert choice["finish_reason"] == "tool_calls"
    assert body["usage"]["total_tokens"] == 7
