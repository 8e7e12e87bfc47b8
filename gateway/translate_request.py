"""OpenAI chat-completions JSON -> chat_pb2.ChatInput, with 400s that name the bad field.

Plain dict and isinstance checks, no pydantic: this runs once per request on the hot path.
Unknown top-level fields are ignored (as OpenAI-compatible servers do); a known field of
the wrong type or out of OpenAI's documented range is an INVALID_ARGUMENT naming it in
OpenAI's terms ("messages[1].content", "tools[0].function.name"), including the sampling
fields the mesh does not forward (penalties, logit_bias, logprobs). The request's shape is
bounded (`RequestLimits`) before any of it is built, so an oversized request costs little.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NoReturn

from imesh.errors import MeshError, Reason, invalid_argument
from imesh.limits import MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_STOP_SEQUENCES, MAX_TOOLS
from imesh.v1 import chat_pb2

_INT32_MAX = 2**31 - 1
# An affinity key is an id (a conversation's, a user's), not content.
_MAX_AFFINITY_KEY_CHARS = 256
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# OpenAI's documented ranges for the sampling fields.
_PENALTY = (-2.0, 2.0)
_LOGIT_BIAS = (-100, 100)
_TOP_LOGPROBS = (0, 20)
_JSON_TEXT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_ROLES = {
    "system": chat_pb2.ROLE_SYSTEM,
    "developer": chat_pb2.ROLE_DEVELOPER,
    "user": chat_pb2.ROLE_USER,
    "assistant": chat_pb2.ROLE_ASSISTANT,
    "tool": chat_pb2.ROLE_TOOL,
}
_DETAILS = {
    "auto": chat_pb2.IMAGE_DETAIL_AUTO,
    "low": chat_pb2.IMAGE_DETAIL_LOW,
    "high": chat_pb2.IMAGE_DETAIL_HIGH,
}
_TOOL_CHOICE_MODES = {
    "auto": chat_pb2.TOOL_CHOICE_MODE_AUTO,
    "none": chat_pb2.TOOL_CHOICE_MODE_NONE,
    "required": chat_pb2.TOOL_CHOICE_MODE_REQUIRED,
}
_FORMATS = {
    "text": chat_pb2.RESPONSE_FORMAT_TYPE_TEXT,
    "json_object": chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
    "json_schema": chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
}


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on one request's shape (gateway settings of the same names); a request past
    one gets a 400 naming the limit. OpenAI allows 128 tools.

    `max_json_values` bounds what json.loads may build before anything else is checked:
    it holds the GIL for the whole parse, about 0.1-0.4 us per value on these machines.
    It is counted from the body's commas and brackets (text in strings counts too)."""

    max_messages: int = MAX_MESSAGES
    max_content_parts: int = MAX_CONTENT_PARTS
    max_tools: int = MAX_TOOLS
    max_json_values: int = 100_000


DEFAULT_LIMITS = RequestLimits()


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One parsed chat-completions request: the RPC input plus the edge-only options."""

    input: chat_pb2.ChatInput
    stream: bool
    include_usage: bool


def _reject_constant(name: str) -> NoReturn:
    # json.loads accepts NaN/Infinity by default; they are not JSON and no model takes them.
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_decode = _DECODER.decode
_scan_once = _DECODER.scan_once  # type: ignore[attr-defined]  # set in __init__


def _loads(body: bytes) -> Any:
    """What json.loads(body) does, with a decoder built once instead of per call. A UTF-8
    object with nothing around it (what clients send) is scanned straight away: no
    encoding sniffing, no whitespace matching; anything else, and every error, takes
    json.loads's path, so its messages are json's own."""
    if body[:1] == b"{" and body[1:2] != b"\x00":  # json.detect_encoding says utf-8
        text = body.decode("utf-8", "surrogatepass")
        if text[-1:] == "}":
            try:
                obj, end = _scan_once(text, 0)
            except StopIteration:  # a missing value: json.loads words the error
                return _decode(text)
            if end == len(text):
                return obj
        return _decode(text)
    return _decode(body.decode(json.detect_encoding(body), "surrogatepass"))


def parse_chat_body(body: bytes, limits: RequestLimits = DEFAULT_LIMITS) -> ChatCall:
    """Parse and validate a request body; raises MeshError(INVALID_ARGUMENT) naming the field."""
    values = body.count(b",") + body.count(b"[") + body.count(b"{")
    if values > limits.max_json_values:
        raise _bad_body(
            f"the request body holds too many JSON values: more than {limits.max_json_values}"
            " (gateway.max_json_values)"
        )
    try:
        data = _loads(body)
    except (ValueError, RecursionError) as exc:
        raise _invalid_json(exc) from None
    if not isinstance(data, dict):
        raise _bad_body("the request body must be a JSON object")
    try:
        return translate_chat(data, limits)
    except UnicodeEncodeError:
        # JSON may spell lone UTF-16 surrogates ("\\ud800"); protobuf strings are UTF-8.
        raise _bad_body("a string in the request holds an unpaired UTF-16 surrogate") from None


def translate_chat(data: dict[str, Any], limits: RequestLimits = DEFAULT_LIMITS) -> ChatCall:
    """Validate an already-decoded request object and build the ChatInput."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        _bad("model", "is required and must be a non-empty string")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        _bad("messages", "is required and must be a non-empty array")
    _bound("messages", len(messages), limits.max_messages, "max_messages")
    parts = sum(
        len(m["content"]) for m in messages if type(m) is dict and type(m.get("content")) is list
    )
    _bound("messages[].content", parts, limits.max_content_parts, "max_content_parts")
    tools = data.get("tools")
    if tools is not None and isinstance(tools, list):
        _bound("tools", len(tools), limits.max_tools, "max_tools")

    out = chat_pb2.ChatInput(model=model)
    out.messages.extend([_message(m, i) for i, m in enumerate(messages)])

    # Optional fields are looked up only when present (`in` is no call; most requests
    # carry few of them): absent and null read alike.
    stream = "stream" in data and bool(_opt_bool(data, "stream"))
    include_usage = False
    options = data.get("stream_options") if "stream_options" in data else None
    if options is not None:
        if not stream:
            _bad("stream_options", "is only allowed when stream is true")
        if not isinstance(options, dict):
            _bad("stream_options", "must be an object")
        include_usage = _opt_bool(options, "include_usage", "stream_options.") or False

    if "n" in data:
        n = data["n"]
        if n is not None and (type(n) is not int or n != 1):
            _bad("n", "only n=1 is supported")

    if "temperature" in data:
        temperature = _opt_number(data, "temperature", 0.0, 2.0)
        if temperature is not None:
            out.temperature = temperature
    if "top_p" in data:
        top_p = _opt_number(data, "top_p", 0.0, 1.0)
        if top_p is not None:
            out.top_p = top_p
    # max_completion_tokens supersedes the deprecated max_tokens when both are given.
    max_tokens = None
    if "max_completion_tokens" in data:
        max_tokens = _opt_int(data, "max_completion_tokens", 1, _INT32_MAX)
    if max_tokens is None and "max_tokens" in data:
        max_tokens = _opt_int(data, "max_tokens", 1, _INT32_MAX)
    if max_tokens is not None:
        out.max_tokens = max_tokens
    if "seed" in data:
        seed = _opt_int(data, "seed", _INT64_MIN, _INT64_MAX)
        if seed is not None:
            out.seed = seed
    if not _UNFORWARDED.isdisjoint(data):
        _check_unforwarded_sampling(data)
    user = data.get("user") if "user" in data else None
    if user is not None:
        if not isinstance(user, str):
            _bad("user", "must be a string")
        out.user = user
    # OpenAI's prompt_cache_key ("requests with the same key share a prompt cache") is the
    # GPU pool's affinity key: same key, same replica while its load allows.
    cache_key = data.get("prompt_cache_key") if "prompt_cache_key" in data else None
    if cache_key is not None:
        if not isinstance(cache_key, str) or len(cache_key) > _MAX_AFFINITY_KEY_CHARS:
            _bad("prompt_cache_key", f"must be a string of at most {_MAX_AFFINITY_KEY_CHARS}")
        out.routing.affinity_key = cache_key
    stop = data.get("stop") if "stop" in data else None
    if stop is not None:
        out.stop.extend(_stop(stop))

    tool_names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            _bad("tools", "must be an array")
        for i, tool in enumerate(tools):
            built = _tool(tool, i)
            tool_names.add(built.name)
            out.tools.append(built)
    choice = data.get("tool_choice") if "tool_choice" in data else None
    if choice is not None:
        out.tool_choice.CopyFrom(_tool_choice(choice, tool_names))
    fmt = data.get("response_format") if "response_format" in data else None
    if fmt is not None:
        out.response_format.CopyFrom(_response_format(fmt))
    return ChatCall(out, stream, include_usage)


_UNFORWARDED = frozenset(
    (
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "parallel_tool_calls",
    )
)


def _check_unforwarded_sampling(data: dict[str, Any]) -> None:
    """Fields no deployment here acts on, held to OpenAI's ranges all the same: a request
    OpenAI would refuse is refused here too."""
    for key in ("presence_penalty", "frequency_penalty"):
        _opt_number(data, key, *_PENALTY)
    bias = data.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            _bad("logit_bias", "must be an object mapping token ids to numbers")
        low, high = _LOGIT_BIAS
        for token, value in bias.items():
            if not token.isdigit():
                _bad("logit_bias", f"keys must be token ids (integers), got {token!r}")
            if type(value) not in (int, float) or not low <= value <= high:
                _bad(f"logit_bias.{token}", f"must be a number between {low} and {high}")
    logprobs = _opt_bool(data, "logprobs")
    if _opt_int(data, "top_logprobs", *_TOP_LOGPROBS) is not None and not logprobs:
        _bad("top_logprobs", "requires logprobs to be true")
    _opt_bool(data, "parallel_tool_calls")


def _bound(field_path: str, count: int, limit: int, setting: str) -> None:
    if count > limit:
        _bad(field_path, f"at most {limit} allowed (gateway.{setting}), got {count}")


def _message(m: object, i: int) -> chat_pb2.Message:
    if not isinstance(m, dict):
        _bad(f"messages[{i}]", "must be an object")
    role_name = m.get("role")
    role = _ROLES.get(role_name) if isinstance(role_name, str) else None
    if role is None:
        _bad(f"messages[{i}].role", f"must be one of {', '.join(_ROLES)}")
    msg = chat_pb2.Message(role=role)
    content = m.get("content")
    if isinstance(content, str):
        msg.content.add(text=content)
    elif isinstance(content, list):
        msg.content.extend([_part(p, i, j) for j, p in enumerate(content)])
    elif content is not None:
        _bad(f"messages[{i}].content", "must be a string or an array of content parts")
    elif role != chat_pb2.ROLE_ASSISTANT:
        _bad(f"messages[{i}].content", "is required")
    name = m.get("name") if "name" in m else None
    if name is not None:
        if not isinstance(name, str):
            _bad(f"messages[{i}].name", "must be a string")
        msg.name = name
    if role == chat_pb2.ROLE_TOOL:
        call_id = m.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            _bad(f"messages[{i}].tool_call_id", "is required for tool messages")
        msg.tool_call_id = call_id
    calls = m.get("tool_calls") if "tool_calls" in m else None
    if calls is not None and role == chat_pb2.ROLE_ASSISTANT:
        if not isinstance(calls, list):
            _bad(f"messages[{i}].tool_calls", "must be an array")
        msg.tool_calls.extend([_tool_call(c, i, j) for j, c in enumerate(calls)])
    return msg


def _part(p: object, i: int, j: int) -> chat_pb2.ContentPart:
    where = f"messages[{i}].content[{j}]"
    if not isinstance(p, dict):
        _bad(where, "must be an object")
    kind = p.get("type")
    if kind == "text":
        text = p.get("text")
        if not isinstance(text, str):
            _bad(f"{where}.text", "must be a string")
        return chat_pb2.ContentPart(text=text)
    if kind == "image_url":
        image = p.get("image_url")
        if isinstance(image, str):  # a lenient shorthand some clients send
            return chat_pb2.ContentPart(image=chat_pb2.ImagePart(url=image))
        if not isinstance(image, dict):
            _bad(f"{where}.image_url", "must be an object with a url")
        url = image.get("url")
        if not isinstance(url, str) or not url:
            _bad(f"{where}.image_url.url", "must be a non-empty string")
        detail_name = image.get("detail")
        detail = chat_pb2.IMAGE_DETAIL_UNSPECIFIED
        if detail_name is not None:
            found = _DETAILS.get(detail_name) if isinstance(detail_name, str) else None
            if found is None:
                _bad(f"{where}.image_url.detail", "must be one of auto, low, high")
            detail = found
        return chat_pb2.ContentPart(image=chat_pb2.ImagePart(url=url, detail=detail))
    _bad(f"{where}.type", "must be 'text' or 'image_url' (other part types are not supported)")


def _tool_call(c: object, i: int, j: int) -> chat_pb2.ToolCall:
    where = f"messages[{i}].tool_calls[{j}]"
    if not isinstance(c, dict):
        _bad(where, "must be an object")
    call_id = c.get("id")
    if not isinstance(call_id, str) or not call_id:
        _bad(f"{where}.id", "must be a non-empty string")
    fn = c.get("function")
    if not isinstance(fn, dict):
        _bad(f"{where}.function", "must be an object")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        _bad(f"{where}.function.name", "must be a non-empty string")
    arguments = fn.get("arguments", "")
    if not isinstance(arguments, str):
        _bad(f"{where}.function.arguments", "must be a string of JSON")
    return chat_pb2.ToolCall(id=call_id, name=name, arguments_json=arguments)


def _tool(tool: object, i: int) -> chat_pb2.Tool:
    if not isinstance(tool, dict):
        _bad(f"tools[{i}]", "must be an object")
    if tool.get("type", "function") != "function":
        _bad(f"tools[{i}].type", "must be 'function'")
    fn = tool.get("function")
    if not isinstance(fn, dict):
        _bad(f"tools[{i}].function", "must be an object")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        _bad(f"tools[{i}].function.name", "must be a non-empty string")
    out = chat_pb2.Tool(name=name)
    description = fn.get("description")
    if description is not None:
        if not isinstance(description, str):
            _bad(f"tools[{i}].function.description", "must be a string")
        out.description = description
    parameters = fn.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            _bad(f"tools[{i}].function.parameters", "must be a JSON Schema object")
        out.parameters_json = _JSON_TEXT(parameters)
    strict = _opt_bool(fn, "strict", f"tools[{i}].function.")
    if strict:
        out.strict = True
    return out


def _tool_choice(choice: object, tool_names: set[str]) -> chat_pb2.ToolChoice:
    if isinstance(choice, str):
        mode = _TOOL_CHOICE_MODES.get(choice)
        if mode is None:
            _bad("tool_choice", "must be 'auto', 'none', 'required' or a function choice")
        return chat_pb2.ToolChoice(mode=mode)
    if not isinstance(choice, dict) or choice.get("type") != "function":
        _bad("tool_choice", "must be 'auto', 'none', 'required' or a function choice")
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        _bad("tool_choice.function.name", "must be a non-empty string")
    if name not in tool_names:
        _bad("tool_choice.function.name", f"names no tool given in tools: {name!r}")
    return chat_pb2.ToolChoice(function_name=name)


def _response_format(fmt: object) -> chat_pb2.ResponseFormat:
    if not isinstance(fmt, dict):
        _bad("response_format", "must be an object")
    kind_name = fmt.get("type")
    kind = _FORMATS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        _bad("response_format.type", "must be one of text, json_object, json_schema")
    out = chat_pb2.ResponseFormat(type=kind)
    if kind != chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        return out
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        _bad("response_format.json_schema", "is required for type json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        _bad("response_format.json_schema.name", "must be a non-empty string")
    out.schema_name = name
    schema = spec.get("schema")
    if schema is not None:
        if not isinstance(schema, dict):
            _bad("response_format.json_schema.schema", "must be a JSON Schema object")
        out.json_schema = _JSON_TEXT(schema)
    if _opt_bool(spec, "strict", "response_format.json_schema."):
        out.strict = True
    return out


def _stop(stop: object) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if len(stop) > MAX_STOP_SEQUENCES:
            _bad("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return stop
    _bad("stop", "must be a string or an array of strings")


def _opt_bool(obj: dict[str, Any], key: str, prefix: str = "") -> bool | None:
    value = obj.get(key)
    if value is None or value is True or value is False:
        return value
    _bad(prefix + key, "must be a boolean")


def _opt_number(obj: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) not in (int, float):  # bool is an int subclass; it is not a number here
        _bad(key, "must be a number")
    if not low <= value <= high:
        _bad(key, f"must be between {low:g} and {high:g}")
    return float(value)


def _opt_int(obj: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int:
        _bad(key, "must be an integer")
    if not low <= value <= high:
        _bad(key, f"must be between {low} and {high}")
    return int(value)


def _bad(field_path: str, why: str) -> NoReturn:
    raise invalid_argument(field_path, why)


def _invalid_json(exc: BaseException) -> MeshError:
    if isinstance(exc, json.JSONDecodeError):
        detail = exc.msg
    elif isinstance(exc, RecursionError):
        detail = "nested too deeply"
    else:
        detail = str(exc)
    return _bad_body(f"the request body is not valid JSON ({detail})", Reason.INVALID_JSON)


def _bad_body(message: str, reason: Reason = Reason.INVALID_REQUEST) -> MeshError:
    return MeshError.of(reason, message)
