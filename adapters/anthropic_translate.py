"""ChatInput ↔ Anthropic Messages JSON: request bodies and the streaming event sequence.

JSON mode: Anthropic has no response_format, so JSON_OBJECT and JSON_SCHEMA are served
with a forced tool: a tool named `json_response` whose input_schema is the caller's
schema (or any object), forced by tool_choice. Its input_json_delta pieces are relayed
as content text and its tool_use stop as FINISH_REASON_STOP, so the caller sees a JSON
answer exactly as from OpenAI's response_format. (Prefill cannot enforce a schema.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from adapters.http_errors import error_from_stream_event
from adapters.json_body import JsonBody
from adapters.openai_translate import float32
from adapters.sse import SSEEvent
from adapters.stream_translator import TranslatorState, content_event, tool_call_event
from imesh.errors import invalid_argument
from imesh.v1 import chat_pb2, events_pb2

JSON_TOOL = "json_response"
STOP_REASONS: dict[str, events_pb2.FinishReason.ValueType] = {
    "end_turn": events_pb2.FINISH_REASON_STOP,
    "stop_sequence": events_pb2.FINISH_REASON_STOP,
    "pause_turn": events_pb2.FINISH_REASON_STOP,
    "max_tokens": events_pb2.FINISH_REASON_LENGTH,
    "model_context_window_exceeded": events_pb2.FINISH_REASON_LENGTH,
    "tool_use": events_pb2.FINISH_REASON_TOOL_CALLS,
    "refusal": events_pb2.FINISH_REASON_CONTENT_FILTER,
}
_ANY_OBJECT = '{"type":"object"}'


def json_mode(chat: chat_pb2.ChatInput) -> bool:
    return chat.response_format.type in (
        chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
        chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
    )


def build_messages_body(
    chat: chat_pb2.ChatInput, provider_model: str, *, default_max_tokens: int, stream: bool = True
) -> bytes:
    """The request body for POST /v1/messages, streaming or not."""
    raw = JsonBody()
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(chat.messages):
        if message.role in (chat_pb2.ROLE_SYSTEM, chat_pb2.ROLE_DEVELOPER):
            if any(p.HasField("image") for p in message.content):
                raise invalid_argument(f"messages[{index}].content", "no images in system")
            system.append("".join(p.text for p in message.content))
            continue
        role, blocks = _blocks(message, index, raw)
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)  # Anthropic needs alternating roles
        else:
            messages.append({"role": role, "content": blocks})
    for merged in messages:
        # tool_result blocks must lead a user turn.
        merged["content"].sort(key=lambda block: block["type"] != "tool_result")
    body: dict[str, Any] = {
        "model": provider_model,
        "max_tokens": chat.max_tokens
        if chat.HasField("max_tokens") and chat.max_tokens > 0
        else default_max_tokens,
        "messages": messages,
    }
    if any(system):
        body["system"] = "\n\n".join(s for s in system if s)
    tools = [_tool(t, raw) for t in chat.tools]
    tool_choice = _tool_choice(chat.tool_choice) if chat.tools else None
    if json_mode(chat):
        if any(t.name == JSON_TOOL for t in chat.tools):
            raise invalid_argument("tools", f"the tool name {JSON_TOOL!r} is reserved")
        schema = chat.response_format.json_schema or _ANY_OBJECT
        tools.append(
            {
                "name": JSON_TOOL,
                "description": "Give the answer as JSON"
                + (
                    f" ({chat.response_format.schema_name})"
                    if chat.response_format.schema_name
                    else ""
                ),
                "input_schema": raw.raw(schema),
            }
        )
        tool_choice = {"type": "tool", "name": JSON_TOOL}
    if tools:
        body["tools"] = tools
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if chat.HasField("temperature"):
        body["temperature"] = float32(chat.temperature)
    if chat.HasField("top_p"):
        body["top_p"] = float32(chat.top_p)
    if chat.stop:
        body["stop_sequences"] = list(chat.stop)
    if chat.user:
        body["metadata"] = {"user_id": chat.user}
    if stream:
        body["stream"] = True
    return raw.encode(body)


class AnthropicStreamTranslator(TranslatorState):
    """message_start … content_block_* … message_delta, message_stop → ChatEvents."""

    def _begin(self) -> None:
        self._json_mode = json_mode(self._chat)
        # content block index -> tool-call index (-1: the JSON-mode tool, relayed as text)
        self._tool_blocks: dict[int, int] = {}
        self._usage: dict[str, int] = {}
        self._usage_final = False
        self._stop_reason = ""

    def feed(self, event: SSEEvent, out: list[events_pb2.ChatEvent]) -> None:
        data = orjson.loads(event.data)
        if not isinstance(data, dict):
            raise ValueError("event data is not an object")
        self._event(data.get("type") or event.event, data, out, named=event.event)

    async def whole(self, answer: dict[str, Any]) -> list[events_pb2.ChatEvent]:
        """A whole `message` object (a non-streaming call) as the events its stream would
        have given: played through the same steps, so tools, JSON mode and usage agree."""
        out: list[events_pb2.ChatEvent] = []
        usage = answer.get("usage") or {}
        self._event("message_start", {"message": {"usage": usage}}, out)
        for index, block in enumerate(answer.get("content") or ()):
            if block.get("type") == "tool_use":
                start = {k: v for k, v in block.items() if k != "input"}
                self._event("content_block_start", {"index": index, "content_block": start}, out)
                partial = orjson.dumps(block.get("input") or {}).decode()
                delta = {"type": "input_json_delta", "partial_json": partial}
                self._event("content_block_delta", {"index": index, "delta": delta}, out)
            else:
                self._event("content_block_start", {"index": index, "content_block": block}, out)
        stop = {"stop_reason": answer.get("stop_reason")}
        self._event("message_delta", {"delta": stop, "usage": usage}, out)
        self._event("message_stop", {}, out)
        return [*out, *await self.final_events()]

    def _event(
        self,
        kind: object,
        data: dict[str, Any],
        out: list[events_pb2.ChatEvent],
        *,
        named: str = "",
    ) -> None:
        if kind == "content_block_delta":
            self._delta(int(data.get("index") or 0), data.get("delta") or {}, out)
        elif kind == "content_block_start":
            self._block_start(int(data.get("index") or 0), data.get("content_block") or {}, out)
        elif kind == "message_start":
            self._take_usage((data.get("message") or {}).get("usage") or {})
        elif kind == "message_delta":
            self._stop_reason = (data.get("delta") or {}).get("stop_reason") or self._stop_reason
            self._take_usage(data.get("usage") or {})
            self._usage_final = True
        elif kind == "message_stop":
            self._done = True
        elif kind == "error" or named == "error":
            error = data.get("error") or {}
            raise error_from_stream_event(
                self._provider,
                str(error.get("type") or "api_error"),
                str(error.get("message") or ""),
                secrets=self._secrets,
            )
        # ping, content_block_stop and event types added later carry nothing for us.

    def _block_start(
        self, index: int, block: dict[str, Any], out: list[events_pb2.ChatEvent]
    ) -> None:
        if block.get("type") == "text" and block.get("text"):
            self._text(block["text"], out)
        elif block.get("type") == "tool_use":
            if self._json_mode and block.get("name") == JSON_TOOL:
                self._tool_blocks[index] = -1
                return
            call_index = sum(1 for i in self._tool_blocks.values() if i >= 0)
            self._tool_blocks[index] = call_index
            name = block.get("name") or ""
            self._seen.append(name)
            out.append(tool_call_event(call_index, id=block.get("id") or "", name=name))

    def _delta(self, index: int, delta: dict[str, Any], out: list[events_pb2.ChatEvent]) -> None:
        kind = delta.get("type")
        if kind == "text_delta":
            self._text(delta.get("text") or "", out)
        elif kind == "input_json_delta":
            partial = delta.get("partial_json") or ""
            call_index = self._tool_blocks.get(index)
            if not partial or call_index is None:
                return
            if call_index < 0:
                self._text(partial, out)
                return
            self._seen.append(partial)
            out.append(tool_call_event(call_index, arguments_delta=partial))
        # thinking, signature and citation deltas are not relayed.

    def _text(self, text: str, out: list[events_pb2.ChatEvent]) -> None:
        if text:
            self._seen.append(text)
            out.append(content_event(text))

    def _take_usage(self, usage: dict[str, Any]) -> None:
        # message_delta counts are cumulative: a later value replaces an earlier one.
        for key in (
            "input_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "output_tokens",
        ):
            if usage.get(key) is not None:
                self._usage[key] = int(usage[key])
        details = usage.get("output_tokens_details") or {}
        if details.get("thinking_tokens") is not None:
            self._usage["thinking_tokens"] = int(details["thinking_tokens"])

    def _provider_usage(self) -> events_pb2.Usage:
        u = self._usage
        cache_read = u.get("cache_read_input_tokens", 0)
        return events_pb2.Usage(
            prompt_tokens=u.get("input_tokens", 0)
            + cache_read
            + u.get("cache_creation_input_tokens", 0),
            completion_tokens=u.get("output_tokens", 0),
            cached_tokens=cache_read,
            reasoning_tokens=u.get("thinking_tokens", 0),
        )

    async def partial_usage(self) -> events_pb2.Usage:
        if self._usage_final:
            return self._provider_usage()
        estimate = await self._estimate()
        if "input_tokens" in self._usage:
            # message_start's prompt counts are exact; only the completion is counted here.
            usage = self._provider_usage()
            usage.completion_tokens = max(usage.completion_tokens, estimate.completion_tokens)
            usage.estimated = True
            return usage
        return estimate

    async def final_events(self) -> list[events_pb2.ChatEvent]:
        reason = STOP_REASONS.get(self._stop_reason, events_pb2.FINISH_REASON_STOP)
        if reason == events_pb2.FINISH_REASON_TOOL_CALLS and not any(
            i >= 0 for i in self._tool_blocks.values()
        ):
            reason = events_pb2.FINISH_REASON_STOP  # only the JSON-mode tool was used
        return [
            events_pb2.ChatEvent(usage=await self.partial_usage()),
            events_pb2.ChatEvent(finish=events_pb2.Finish(reason=reason)),
        ]


def _blocks(
    message: chat_pb2.Message, index: int, raw: JsonBody
) -> tuple[str, list[dict[str, Any]]]:
    if message.role == chat_pb2.ROLE_TOOL:
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        content = _content_blocks(message.content, index)
        if content:
            result["content"] = content
        return "user", [result]
    if message.role == chat_pb2.ROLE_USER:
        return "user", _content_blocks(message.content, index)
    if message.role == chat_pb2.ROLE_ASSISTANT:
        blocks = _content_blocks(message.content, index)
        blocks.extend(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": raw.raw(call.arguments_json or "{}"),
            }
            for call in message.tool_calls
        )
        return "assistant", blocks
    raise invalid_argument(f"messages[{index}].role", "role is required")


def _content_blocks(parts: Sequence[chat_pb2.ContentPart], index: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if part.HasField("image"):
            blocks.append({"type": "image", "source": _image_source(part.image.url, index)})
        elif part.text:  # Anthropic rejects empty text blocks
            blocks.append({"type": "text", "text": part.text})
    return blocks


def _image_source(url: str, index: int) -> dict[str, str]:
    if not url.startswith("data:"):
        return {"type": "url", "url": url}
    header, comma, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not comma or encoding != "base64" or not media_type:
        raise invalid_argument(
            f"messages[{index}].content.image.url", "data: URLs must be base64 with a media type"
        )
    return {"type": "base64", "media_type": media_type, "data": data}


def _tool(tool: chat_pb2.Tool, raw: JsonBody) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    out["input_schema"] = raw.raw(tool.parameters_json or _ANY_OBJECT)
    return out


def _tool_choice(choice: chat_pb2.ToolChoice) -> dict[str, Any] | None:
    if choice.HasField("function_name"):
        return {"type": "tool", "name": choice.function_name}
    mode = choice.mode
    if mode == chat_pb2.TOOL_CHOICE_MODE_REQUIRED:
        return {"type": "any"}
    if mode == chat_pb2.TOOL_CHOICE_MODE_NONE:
        return {"type": "none"}
    if mode == chat_pb2.TOOL_CHOICE_MODE_AUTO:
        return {"type": "auto"}
    return None
