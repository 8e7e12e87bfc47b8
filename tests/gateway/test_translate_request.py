"""OpenAI request JSON -> ChatInput: what is kept, and 400s that name the offending field."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from gateway import translate_request
from gateway.translate_request import parse_chat_body, translate_chat
from imesh.errors import MeshError
from imesh.v1 import chat_pb2

USER = {"role": "user", "content": "hi"}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": [USER], **fields}


def violation(data: dict[str, Any]) -> str:
    with pytest.raises(MeshError) as caught:
        translate_chat(data)
    err = caught.value
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    return err.field_violations[0].field


def test_minimal_request_becomes_chat_input_with_one_text_message() -> None:
    call = translate_chat(body())
    assert call.input.model == "fast"
    assert call.input.messages[0].role == chat_pb2.ROLE_USER
    assert call.input.messages[0].content[0].text == "hi"
    assert not call.stream
    assert not call.include_usage
    assert not call.input.HasField("temperature")
    assert not call.input.HasField("max_tokens")


def test_sampling_and_limits_are_carried() -> None:
    call = translate_chat(
        body(temperature=0.5, top_p=1, max_tokens=9, seed=7, stop="END", user="u-1")
    )
    chat = call.input
    assert (chat.temperature, chat.top_p, chat.max_tokens, chat.seed) == (0.5, 1.0, 9, 7)
    assert list(chat.stop) == ["END"]
    assert chat.user == "u-1"


def test_max_completion_tokens_wins_over_deprecated_max_tokens() -> None:
    assert translate_chat(body(max_tokens=50, max_completion_tokens=5)).input.max_tokens == 5


def test_content_parts_text_and_image_with_detail() -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
    ]
    msg = translate_chat(body(messages=[{"role": "user", "content": parts}])).input.messages[0]
    assert msg.content[0].text == "what is this?"
    assert msg.content[1].image.url == "https://x/y.png"
    assert msg.content[1].image.detail == chat_pb2.IMAGE_DETAIL_LOW


def test_tool_round_trip_messages_keep_calls_and_call_ids() -> None:
    messages = [
        USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    chat = translate_chat(body(messages=messages)).input
    assert chat.messages[1].role == chat_pb2.ROLE_ASSISTANT
    assert chat.messages[1].tool_calls[0] == chat_pb2.ToolCall(
        id="c1", name="f", arguments_json="{}"
    )
    assert chat.messages[2].role == chat_pb2.ROLE_TOOL
    assert chat.messages[2].tool_call_id == "c1"


def test_tools_keep_parameters_as_json_text_and_tool_choice_forms() -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "w", "parameters": params, "strict": True}}]
    chat = translate_chat(body(tools=tools, tool_choice="required")).input
    assert json.loads(chat.tools[0].parameters_json) == params
    assert chat.tools[0].strict
    assert chat.tool_choice.mode == chat_pb2.TOOL_CHOICE_MODE_REQUIRED
    forced = {"type": "function", "function": {"name": "w"}}
    assert (
        translate_chat(body(tools=tools, tool_choice=forced)).input.tool_choice.function_name == "w"
    )


def test_response_formats_json_object_and_json_schema() -> None:
    fmt = translate_chat(body(response_format={"type": "json_object"})).input.response_format
    assert fmt.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = {"name": "thing", "schema": schema, "strict": True}
    rf = {"type": "json_schema", "json_schema": spec}
    fmt = translate_chat(body(response_format=rf)).input.response_format
    assert fmt.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    assert (fmt.schema_name, json.loads(fmt.json_schema), fmt.strict) == ("thing", schema, True)


def test_stream_options_include_usage_requires_stream() -> None:
    call = translate_chat(body(stream=True, stream_options={"include_usage": True}))
    assert call.stream
    assert call.include_usage
    assert violation(body(stream_options={"include_usage": True})) == "stream_options"


def test_unknown_top_level_fields_are_ignored() -> None:
    call = translate_chat(body(frequency_penalty=0.1, logit_bias={}, parallel_tool_calls=True))
    assert call.input.model == "fast"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": 3}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [USER, {"role": "user", "content": 5}]}, "messages[1].content"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"seed": "x"}, "seed"),
        ({"n": 2}, "n"),
        ({"stop": [1]}, "stop"),
        ({"user": 1}, "user"),
        ({"stream": "yes"}, "stream"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
        ),
        ({"tool_choice": "always"}, "tool_choice"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice.function.name",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
        ),
    ],
)
def test_type_and_range_errors_name_the_openai_field(fields: dict[str, Any], param: str) -> None:
    assert violation(body(**fields)) == param


@pytest.mark.parametrize(
    "raw", [b"{", b"[]", b'"x"', b'{"model": NaN}', b"\xff\xfe", b"[" * 100_000]
)
def test_bodies_that_are_not_a_json_object_are_invalid_argument(raw: bytes) -> None:
    with pytest.raises(MeshError) as caught:
        parse_chat_body(raw)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_lone_surrogate_in_a_string_is_a_400_not_a_crash() -> None:
    raw = b'{"model": "fast", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    with pytest.raises(MeshError) as caught:
        parse_chat_body(raw)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_prompt_cache_key_becomes_the_routing_affinity_key() -> None:
    call = translate_chat(body(prompt_cache_key="conversation-42"))
    assert call.input.routing.affinity_key == "conversation-42"
    assert translate_chat(body()).input.routing.affinity_key == ""


@pytest.mark.parametrize("key", [42, ["a"], "k" * 257])
def test_a_prompt_cache_key_that_is_not_a_short_string_is_refused(key: object) -> None:
    assert violation(body(prompt_cache_key=key)) == "prompt_cache_key"


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": [1, 2, {"b": null}]}',
        b'{"a":1} }',
        b'{"a":1}x}',
        b'{"a":}',
        b'{"a":NaN}',
        b'{"a":"\\ud800"}',
        b' {"a":1}',
        b'{"a":1}\n',
        b'{"a":"}"',
        b'{"a":1, }',
        '{"\u00e9":"\u00fc"}'.encode(),
        '{"a":"b"}'.encode("utf-16-le"),
        b"[1]",
    ],
)
def test_the_body_decodes_as_json_loads_decodes_it(body: bytes) -> None:
    def outcome(loads: Callable[[bytes], object]) -> tuple[str, object]:
        try:
            return ("ok", loads(body))
        except ValueError as exc:
            return (type(exc).__name__, str(exc))

    reference = json.JSONDecoder(parse_constant=translate_request._reject_constant).decode
    assert outcome(translate_request._loads) == outcome(
        lambda b: reference(b.decode(json.detect_encoding(b), "surrogatepass"))
    )
