"""ChatInput ↔ OpenAI Chat Completions JSON: request bodies, stream chunks, whole answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapters.http_errors import error_from_stream_event
from adapters.json_body import JsonBody
from adapters.openai_chunks import (
    Choice,
    ToolCallDelta,
    WholeChoice,
    decode_chunk,
    decode_completion,
)
from adapters.sse import SSEEvent
from adapters.stream_translator import TranslatorState, content_event, tool_call_event
from adapters.token_estimate import TokenCounter
from imesh.errors import invalid_argument
from imesh.v1 import chat_pb2, events_pb2

FINISH_REASONS: dict[str, events_pb2.FinishReason.ValueType] = {
    "stop": events_pb2.FINISH_REASON_STOP,
    "length": events_pb2.FINISH_REASON_LENGTH,
    "tool_calls": events_pb2.FINISH_REASON_TOOL_CALLS,
    "function_call": events_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": events_pb2.FINISH_REASON_CONTENT_FILTER,
}
_ROLES = {
    chat_pb2.ROLE_SYSTEM: "system",
    chat_pb2.ROLE_USER: "user",
    chat_pb2.ROLE_ASSISTANT: "assistant",
    chat_pb2.ROLE_TOOL: "tool",
    chat_pb2.ROLE_DEVELOPER: "developer",
}
_DETAIL = {
    chat_pb2.IMAGE_DETAIL_AUTO: "auto",
    chat_pb2.IMAGE_DETAIL_LOW: "low",
    chat_pb2.IMAGE_DETAIL_HIGH: "high",
}
# A whole answer without choices: no output, only its usage and a finish.
_NO_CHOICE = WholeChoice()
_TOOL_CHOICE = {
    chat_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    chat_pb2.TOOL_CHOICE_MODE_NONE: "none",
    chat_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
}


@dataclass(frozen=True, slots=True)
class OpenAIDialect:
    """What differs between OpenAI itself and servers that speak its API."""

    provider: str
    max_tokens_field: str = "max_completion_tokens"
    stream: bool = True
    include_usage: bool = True
    supports_tools: bool = True
    developer_role: bool = True


def build_chat_body(chat: chat_pb2.ChatInput, provider_model: str, dialect: OpenAIDialect) -> bytes:
    """The request body for POST /chat/completions."""
    raw = JsonBody()
    body: dict[str, Any] = {
        "model": provider_model,
        "messages": [_message(m, dialect, raw) for m in chat.messages],
    }
    if chat.tools:
        if not dialect.supports_tools:
            raise invalid_argument("tools", f"{dialect.provider} does not support tools")
        body["tools"] = [_tool(t, raw) for t in chat.tools]
    # OpenAI refuses tool_choice without tools (400); "auto"/"none" then mean nothing.
    if chat.tools and chat.HasField("tool_choice") and dialect.supports_tools:
        choice = chat.tool_choice
        if choice.HasField("function_name"):
            body["tool_choice"] = {"type": "function", "function": {"name": choice.function_name}}
        elif choice.mode in _TOOL_CHOICE:
            body["tool_choice"] = _TOOL_CHOICE[choice.mode]
    response_format = _response_format(chat.response_format, raw)
    if response_format is not None:
        body["response_format"] = response_format
    if chat.HasField("temperature"):
        body["temperature"] = float32(chat.temperature)
    if chat.HasField("top_p"):
        body["top_p"] = float32(chat.top_p)
    if chat.HasField("max_tokens") and chat.max_tokens > 0:
        body[dialect.max_tokens_field] = chat.max_tokens
    if chat.stop:
        body["stop"] = list(chat.stop)
    if chat.HasField("seed"):
        body["seed"] = chat.seed
    if chat.user:
        body["user"] = chat.user
    if dialect.stream:
        body["stream"] = True
        if dialect.include_usage:
            body["stream_options"] = {"include_usage": True}
    return raw.encode(body)


def float32(value: float) -> float:
    """A proto float as the decimal the caller wrote (0.7, not 0.699999988079071)."""
    return float(f"{value:.7g}")


def usage_from_openai(usage: dict[str, Any]) -> events_pb2.Usage:
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return events_pb2.Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


class OpenAIStreamTranslator(TranslatorState):
    """chat.completion.chunk events → ChatEvents, for one call (choice 0 only)."""

    _usage: events_pb2.Usage | None = None
    _finish: events_pb2.FinishReason.ValueType | None = None
    _tool_calls = False

    def feed(self, event: SSEEvent, out: list[events_pb2.ChatEvent]) -> None:
        if event.data == b"[DONE]":
            self._done = True
            return
        chunk = decode_chunk(event.data)
        error = chunk.error
        if error:
            detail = error if isinstance(error, dict) else {"message": str(error)}
            raise error_from_stream_event(
                self._provider,
                str(detail.get("type") or detail.get("code") or "server_error"),
                str(detail.get("message") or ""),
                secrets=self._secrets,
            )
        if chunk.usage:
            self._usage = usage_from_openai(chunk.usage)
        for choice in chunk.choices or ():
            if not choice.index:  # choice 0 (an absent index is 0)
                self._choice(choice, out)

    def _choice(self, choice: Choice, out: list[events_pb2.ChatEvent]) -> None:
        delta = choice.delta
        if delta is not None:
            if delta.content:
                self._seen.append(delta.content)
                out.append(content_event(delta.content))
            if delta.refusal:
                self._seen.append(delta.refusal)
                out.append(content_event(delta.refusal))
            for call in delta.tool_calls or ():
                function = call.function
                name = (function.name if function else None) or ""
                arguments = (function.arguments if function else None) or ""
                self._tool_calls = True
                self._seen.extend((name, arguments))
                out.append(
                    tool_call_event(
                        call.index or 0, id=call.id or "", name=name, arguments_delta=arguments
                    )
                )
        if choice.finish_reason:
            self._finish = FINISH_REASONS.get(choice.finish_reason, events_pb2.FINISH_REASON_STOP)

    async def final_events(self) -> list[events_pb2.ChatEvent]:
        return [
            events_pb2.ChatEvent(usage=await self.partial_usage()),
            events_pb2.ChatEvent(finish=events_pb2.Finish(reason=self._finish_reason())),
        ]

    async def partial_usage(self) -> events_pb2.Usage:
        return self._usage or await self._estimate()

    def _finish_reason(self) -> events_pb2.FinishReason.ValueType:
        if self._finish is not None:
            return self._finish
        return (
            events_pb2.FINISH_REASON_TOOL_CALLS
            if self._tool_calls
            else events_pb2.FINISH_REASON_STOP
        )


async def events_from_completion(
    body: bytes, chat: chat_pb2.ChatInput, counter: TokenCounter
) -> list[events_pb2.ChatEvent]:
    """A whole `chat.completion` body (non-streaming call) as the same event sequence,
    decoded and translated in one pass (raises a MALFORMED error for a body of the wrong
    shape)."""
    answer = decode_completion(body)
    choice = answer.choices[0] if answer.choices else _NO_CHOICE
    message = choice.message
    out: list[events_pb2.ChatEvent] = []
    seen: list[str] = []
    calls: Sequence[ToolCallDelta] = ()
    if message is not None:
        for text in (message.content, message.refusal):
            if text:
                seen.append(text)
                out.append(content_event(text))
        calls = message.tool_calls or ()
        for index, call in enumerate(calls):
            function = call.function
            name = (function.name if function else None) or ""
            arguments = (function.arguments if function else None) or ""
            seen.extend((name, arguments))
            out.append(
                tool_call_event(index, id=call.id or "", name=name, arguments_delta=arguments)
            )
    usage = answer.usage
    out.append(
        events_pb2.ChatEvent(
            usage=usage_from_openai(usage) if usage else await counter.estimate(chat, seen)
        )
    )
    default = events_pb2.FINISH_REASON_TOOL_CALLS if calls else events_pb2.FINISH_REASON_STOP
    reason = FINISH_REASONS.get(choice.finish_reason or "", default)
    out.append(events_pb2.ChatEvent(finish=events_pb2.Finish(reason=reason)))
    return out


def _message(message: chat_pb2.Message, dialect: OpenAIDialect, raw: JsonBody) -> dict[str, Any]:
    role = _ROLES.get(message.role)
    if role is None:
        raise invalid_argument("messages.role", "role is required")
    if role == "developer" and not dialect.developer_role:
        role = "system"
    out: dict[str, Any] = {"role": role}
    if role == "tool":
        out["tool_call_id"] = message.tool_call_id
        out["content"] = "".join(p.text for p in message.content)
        return out
    out["content"] = _content(message.content)
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json or "{}"},
            }
            for call in message.tool_calls
        ]
        if not out["content"]:
            out["content"] = None
    return out


def _content(parts: Sequence[chat_pb2.ContentPart]) -> str | list[dict[str, Any]]:
    # Plain text stays a string: every OpenAI-compatible server accepts that form.
    if all(not p.HasField("image") for p in parts):
        return "".join(p.text for p in parts)
    out: list[dict[str, Any]] = []
    for part in parts:
        if part.HasField("image"):
            image: dict[str, Any] = {"url": part.image.url}
            if part.image.detail in _DETAIL:
                image["detail"] = _DETAIL[part.image.detail]
            out.append({"type": "image_url", "image_url": image})
        elif part.text:
            out.append({"type": "text", "text": part.text})
    return out


def _tool(tool: chat_pb2.Tool, raw: JsonBody) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    if tool.parameters_json:
        function["parameters"] = raw.raw(tool.parameters_json)
    if tool.strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def _response_format(
    response_format: chat_pb2.ResponseFormat, raw: JsonBody
) -> dict[str, Any] | None:
    kind = response_format.type
    if kind == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        return {"type": "json_object"}
    if kind == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        schema: dict[str, Any] = {"name": response_format.schema_name or "response"}
        if response_format.json_schema:
            schema["schema"] = raw.raw(response_format.json_schema)
        if response_format.strict:
            schema["strict"] = True
        return {"type": "json_schema", "json_schema": schema}
    if kind == chat_pb2.RESPONSE_FORMAT_TYPE_TEXT:
        return {"type": "text"}
    return None
