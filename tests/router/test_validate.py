"""Request validation: every bad request is INVALID_ARGUMENT naming the offending field."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from imesh.errors import MeshError
from imesh.v1 import chat_pb2
from router.validate import INLINE_PARTS, validate_chat_input, validate_small_chat_input


def text(role: chat_pb2.Role.ValueType, body: str = "hi", **fields: object) -> chat_pb2.Message:
    return chat_pb2.Message(role=role, content=[chat_pb2.ContentPart(text=body)], **fields)  # type: ignore[arg-type]


def good() -> chat_pb2.ChatInput:
    return chat_pb2.ChatInput(model="auto", messages=[text(chat_pb2.ROLE_USER)])


def with_tool(params: str = '{"type": "object"}', name: str = "get_weather") -> chat_pb2.ChatInput:
    request = good()
    request.tools.add(name=name, parameters_json=params)
    return request


def test_a_well_formed_request_passes() -> None:
    request = with_tool()
    request.temperature = 0.7
    request.top_p = 1.0
    request.max_tokens = 100
    request.stop.extend(["\n\n"])
    request.tool_choice.function_name = "get_weather"
    request.messages.append(
        chat_pb2.Message(
            role=chat_pb2.ROLE_ASSISTANT,
            tool_calls=[chat_pb2.ToolCall(id="c1", name="get_weather", arguments_json="{}")],
        )
    )
    request.messages.append(text(chat_pb2.ROLE_TOOL, "sunny", tool_call_id="c1"))
    request.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    request.response_format.schema_name = "weather"
    request.response_format.json_schema = '{"type": "object"}'
    validate_chat_input(request)


def _set(**fields: object) -> Callable[[chat_pb2.ChatInput], None]:
    def apply(request: chat_pb2.ChatInput) -> None:
        for name, value in fields.items():
            setattr(request, name, value)

    return apply


def _messages(*messages: chat_pb2.Message) -> Callable[[chat_pb2.ChatInput], None]:
    def apply(request: chat_pb2.ChatInput) -> None:
        del request.messages[:]
        request.messages.extend(messages)

    return apply


def _tools(params: str, name: str = "get_weather") -> Callable[[chat_pb2.ChatInput], None]:
    def apply(request: chat_pb2.ChatInput) -> None:
        request.tools.add(name=name, parameters_json=params)

    return apply


def _schema(schema: str, name: str = "s") -> Callable[[chat_pb2.ChatInput], None]:
    def apply(request: chat_pb2.ChatInput) -> None:
        request.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
        request.response_format.schema_name = name
        request.response_format.json_schema = schema

    return apply


def _choice(name: str) -> Callable[[chat_pb2.ChatInput], None]:
    def apply(request: chat_pb2.ChatInput) -> None:
        request.tool_choice.function_name = name

    return apply


def _stops(*stops: str) -> Callable[[chat_pb2.ChatInput], None]:
    def apply(request: chat_pb2.ChatInput) -> None:
        request.stop.extend(stops)

    return apply


def _image(role: chat_pb2.Role.ValueType, url: str) -> chat_pb2.Message:
    return chat_pb2.Message(
        role=role, content=[chat_pb2.ContentPart(image=chat_pb2.ImagePart(url=url))]
    )


CASES = [
    (_set(model=""), "input.model", "required"),
    (_messages(), "input.messages", "at least one message is required"),
    (_set(temperature=2.5), "input.temperature", "must be between 0 and 2"),
    (_set(temperature=-0.1), "input.temperature", "must be between 0 and 2"),
    (_set(temperature=float("nan")), "input.temperature", "must be between 0 and 2"),
    (_set(top_p=1.5), "input.top_p", "must be between 0 and 1"),
    (_set(max_tokens=-1), "input.max_tokens", "must not be negative"),
    (
        _messages(text(chat_pb2.ROLE_USER), text(chat_pb2.ROLE_USER), text(chat_pb2.ROLE_TOOL)),
        "input.messages[2].tool_call_id",
        "required for role TOOL",
    ),
    (_messages(text(chat_pb2.ROLE_UNSPECIFIED)), "input.messages[0].role", "unknown role"),
    (_messages(text(99)), "input.messages[0].role", "unknown role 99"),  # type: ignore[arg-type]
    (_messages(chat_pb2.Message(role=chat_pb2.ROLE_USER)), "input.messages[0].content", "empty"),
    (
        _messages(_image(chat_pb2.ROLE_USER, "ftp://x/y.png")),
        "input.messages[0].content[0].image.url",
        "http(s) or data: URL",
    ),
    (
        _messages(_image(chat_pb2.ROLE_SYSTEM, "https://x/y.png")),
        "input.messages[0].content[0].image",
        "user messages only",
    ),
    (
        _messages(
            chat_pb2.Message(
                role=chat_pb2.ROLE_ASSISTANT,
                tool_calls=[chat_pb2.ToolCall(id="c", name="f", arguments_json="{oops")],
            )
        ),
        "input.messages[0].tool_calls[0].arguments_json",
        "not valid JSON",
    ),
    (_tools("{not json"), "input.tools[0].parameters_json", "not valid JSON"),
    (_tools("[1, 2]"), "input.tools[0].parameters_json", "must be a JSON object"),
    (_tools('{"x": NaN}'), "input.tools[0].parameters_json", "not valid JSON"),
    (_tools("{}", name="has space"), "input.tools[0].name", "letters, digits"),
    (_schema('{"type": '), "input.response_format.json_schema", "not valid JSON"),
    (_schema("{}", name=""), "input.response_format.schema_name", "required"),
    (_choice("nope"), "input.tool_choice.function_name", "no tool named 'nope'"),
    (_stops("a", "b", "c", "d", "e"), "input.stop", "at most 4"),
    (_stops("a", ""), "input.stop[1]", "must not be empty"),
]


@pytest.mark.parametrize(("mutate", "field", "why"), CASES)
def test_bad_request_is_invalid_argument_naming_the_field(
    mutate: Callable[[chat_pb2.ChatInput], None], field: str, why: str
) -> None:
    request = good()
    mutate(request)
    with pytest.raises(MeshError) as caught:
        validate_chat_input(request)
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.message.startswith(f"{field}: ")
    assert why in error.message
    assert [v.field for v in error.field_violations] == [field]


def test_duplicate_tool_names_are_refused() -> None:
    request = with_tool()
    request.tools.add(name="get_weather", parameters_json="{}")
    with pytest.raises(MeshError, match=r"input\.tools\[1\]\.name: duplicate"):
        validate_chat_input(request)


def _text_message(text: str = "x") -> chat_pb2.Message:
    return chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=text)])


@pytest.mark.parametrize(
    ("request_input", "field_path"),
    [
        (chat_pb2.ChatInput(model="m", messages=[_text_message()] * 2049), "input.messages"),
        (
            chat_pb2.ChatInput(
                model="m",
                messages=[
                    chat_pb2.Message(
                        role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="x")] * 2049
                    )
                ]
                * 2,
            ),
            "input.messages[].content",
        ),
        (
            chat_pb2.ChatInput(
                model="m",
                messages=[_text_message()],
                tools=[chat_pb2.Tool(name=f"t{i}") for i in range(129)],
            ),
            "input.tools",
        ),
    ],
)
def test_the_shape_of_a_request_is_bounded_before_it_is_walked(
    request_input: chat_pb2.ChatInput, field_path: str
) -> None:
    with pytest.raises(MeshError) as caught:
        validate_chat_input(request_input)
    assert caught.value.field_violations[0].field == field_path
    assert "at most" in caught.value.field_violations[0].description


def test_a_small_request_is_validated_on_the_calling_thread() -> None:
    assert validate_small_chat_input(good()) is True
    bad = good()
    bad.messages[0].role = 99  # type: ignore[assignment]
    with pytest.raises(MeshError) as caught:
        validate_small_chat_input(bad)
    assert caught.value.field_violations[0].field == "input.messages[0].role"


def test_a_large_request_is_left_for_a_worker_thread() -> None:
    request = good()
    request.messages[0].role = 99  # type: ignore[assignment]  # invalid, yet not checked here
    for _ in range(INLINE_PARTS):
        request.messages[0].content.add(text="x")
    assert validate_small_chat_input(request) is False
    with pytest.raises(MeshError):
        validate_chat_input(request)
