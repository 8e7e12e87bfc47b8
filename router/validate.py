"""Request validation: a ChatInput the router can route, or INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import asyncio
import json
import re

from imesh.errors import invalid_argument
from imesh.limits import MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_STOP_SEQUENCES, MAX_TOOLS
from imesh.v1 import chat_pb2

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KNOWN_ROLES = frozenset(
    {
        chat_pb2.ROLE_SYSTEM,
        chat_pb2.ROLE_USER,
        chat_pb2.ROLE_ASSISTANT,
        chat_pb2.ROLE_TOOL,
        chat_pb2.ROLE_DEVELOPER,
    }
)
_IMAGE_SCHEMES = ("https://", "http://", "data:")


# Requests with more content parts than this are validated on a worker thread.
INLINE_PARTS = 64


async def validate_chat_input_off_loop(request: chat_pb2.ChatInput) -> None:
    """validate_chat_input, on a worker thread for large requests (about 8 us a part),
    so one large request does not hold up the event loop's other calls."""
    if not validate_small_chat_input(request):
        await asyncio.to_thread(validate_chat_input, request)


def validate_small_chat_input(request: chat_pb2.ChatInput) -> bool:
    """validate_chat_input for a request of at most INLINE_PARTS content parts, on the
    calling thread (True); a larger one is left unchecked (False): validate it with
    `validate_chat_input_off_loop`. The synchronous fast path of the latter."""
    parts = _parts(request)
    if parts > INLINE_PARTS:
        return False
    _validate(request, parts)
    return True


def validate_chat_input(request: chat_pb2.ChatInput) -> None:
    """Raises MeshError INVALID_ARGUMENT for the first problem found, naming its field
    as `input.<path>` (the path in ChatRequest/ChatStreamRequest)."""
    _validate(request, _parts(request))


def _parts(request: chat_pb2.ChatInput) -> int:
    parts = 0
    for message in request.messages:
        parts += len(message.content)
    return parts


def _validate(request: chat_pb2.ChatInput, parts: int) -> None:
    if not request.model:
        raise invalid_argument("input.model", "required: an alias or deployment name")
    _validate_shape(request, parts)
    _validate_messages(request)
    _validate_sampling(request)
    # Each check below finds nothing to check in a field left unset.
    tool_names = _validate_tools(request) if request.tools else set()
    if request.HasField("tool_choice"):
        _validate_tool_choice(request, tool_names)
    if request.HasField("response_format"):
        _validate_response_format(request)
    routing = request.routing
    if routing.HasField("max_cost_micros") and routing.max_cost_micros < 0:
        raise invalid_argument("input.routing.max_cost_micros", "must not be negative")


def _validate_shape(request: chat_pb2.ChatInput, parts: int) -> None:
    if len(request.messages) > MAX_MESSAGES:
        raise invalid_argument(
            "input.messages", f"at most {MAX_MESSAGES} allowed, got {len(request.messages)}"
        )
    if parts > MAX_CONTENT_PARTS:
        raise invalid_argument(
            "input.messages[].content", f"at most {MAX_CONTENT_PARTS} parts allowed, got {parts}"
        )
    if len(request.tools) > MAX_TOOLS:
        raise invalid_argument(
            "input.tools", f"at most {MAX_TOOLS} allowed, got {len(request.tools)}"
        )


def _validate_messages(request: chat_pb2.ChatInput) -> None:
    if not request.messages:
        raise invalid_argument("input.messages", "at least one message is required")
    for i, message in enumerate(request.messages):
        role = message.role
        if role not in _KNOWN_ROLES:
            raise invalid_argument(f"{_at(i)}.role", f"unknown role {role}")
        if role == chat_pb2.ROLE_TOOL and not message.tool_call_id:
            raise invalid_argument(f"{_at(i)}.tool_call_id", "required for role TOOL")
        calls = message.tool_calls
        if calls and role != chat_pb2.ROLE_ASSISTANT:
            raise invalid_argument(f"{_at(i)}.tool_calls", "only assistant messages carry calls")
        content = message.content
        if not content and not calls:
            raise invalid_argument(f"{_at(i)}.content", "empty: give content or tool calls")
        for j, part in enumerate(content):
            which = part.WhichOneof("part")
            if which == "text":
                continue
            if which is None:
                raise invalid_argument(f"{_at(i)}.content[{j}]", "empty part: set text or image")
            if which == "image":
                if role != chat_pb2.ROLE_USER:
                    raise invalid_argument(
                        f"{_at(i)}.content[{j}].image", "images are allowed in user messages only"
                    )
                if not part.image.url.startswith(_IMAGE_SCHEMES):
                    raise invalid_argument(
                        f"{_at(i)}.content[{j}].image.url", "must be an http(s) or data: URL"
                    )
        for j, call in enumerate(calls):
            where = _at(i)
            if not call.id:
                raise invalid_argument(f"{where}.tool_calls[{j}].id", "required")
            if not call.name:
                raise invalid_argument(f"{where}.tool_calls[{j}].name", "required")
            _json(f"{where}.tool_calls[{j}].arguments_json", call.arguments_json, allow_empty=True)


def _at(i: int) -> str:
    """A message's path, built only for an error (or a tool call to check)."""
    return f"input.messages[{i}]"


def _validate_sampling(request: chat_pb2.ChatInput) -> None:
    if request.HasField("temperature") and not 0.0 <= request.temperature <= 2.0:
        raise invalid_argument("input.temperature", "must be between 0 and 2")
    if request.HasField("top_p") and not 0.0 <= request.top_p <= 1.0:
        raise invalid_argument("input.top_p", "must be between 0 and 1")
    if request.HasField("max_tokens") and request.max_tokens < 0:
        raise invalid_argument("input.max_tokens", "must not be negative")
    if len(request.stop) > MAX_STOP_SEQUENCES:
        raise invalid_argument("input.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    for i, stop in enumerate(request.stop):
        if not stop:
            raise invalid_argument(f"input.stop[{i}]", "must not be empty")


def _validate_tools(request: chat_pb2.ChatInput) -> set[str]:
    names: set[str] = set()
    for i, tool in enumerate(request.tools):
        where = f"input.tools[{i}]"
        if not _TOOL_NAME.match(tool.name):
            raise invalid_argument(
                f"{where}.name", "required: 1-64 letters, digits, underscores or dashes"
            )
        if tool.name in names:
            raise invalid_argument(f"{where}.name", f"duplicate tool name {tool.name!r}")
        names.add(tool.name)
        if tool.parameters_json:
            schema = _json(f"{where}.parameters_json", tool.parameters_json)
            if not isinstance(schema, dict):
                raise invalid_argument(f"{where}.parameters_json", "must be a JSON object")
    return names


def _validate_tool_choice(request: chat_pb2.ChatInput, tool_names: set[str]) -> None:
    choice = request.tool_choice
    which = choice.WhichOneof("choice")
    if which == "function_name" and choice.function_name not in tool_names:
        raise invalid_argument(
            "input.tool_choice.function_name", f"no tool named {choice.function_name!r}"
        )
    if which == "mode" and choice.mode == chat_pb2.TOOL_CHOICE_MODE_REQUIRED and not tool_names:
        raise invalid_argument("input.tool_choice.mode", "REQUIRED needs at least one tool")


def _validate_response_format(request: chat_pb2.ChatInput) -> None:
    fmt = request.response_format
    if fmt.type != chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        if fmt.json_schema:
            raise invalid_argument(
                "input.response_format.json_schema", "only allowed with type JSON_SCHEMA"
            )
        return
    if not fmt.schema_name:
        raise invalid_argument("input.response_format.schema_name", "required for JSON_SCHEMA")
    schema = _json("input.response_format.json_schema", fmt.json_schema)
    if not isinstance(schema, dict):
        raise invalid_argument("input.response_format.json_schema", "must be a JSON object")


def _json(field_path: str, text: str, *, allow_empty: bool = False) -> object:
    if not text:
        if allow_empty:
            return None
        raise invalid_argument(field_path, "required: JSON text")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise invalid_argument(field_path, f"not valid JSON ({_why(exc)})") from None


def _reject_constant(name: str) -> float:
    # NaN/Infinity are not JSON; providers would reject them later with a vaguer message.
    raise ValueError(f"{name} is not valid JSON")


def _why(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)
