"""The cheap prompt-size estimate (admission, planning): deterministic figures for text,
images, tools and schemas."""

from __future__ import annotations

from adapters.token_estimate import (
    IMAGE_LOW_DETAIL_TOKENS,
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    REPLY_OVERHEAD,
    TOOL_CALL_OVERHEAD,
    TOOL_OVERHEAD,
    estimate_prompt_tokens,
    text_tokens,
)
from imesh.v1 import chat_pb2


def user(*parts: chat_pb2.ContentPart) -> chat_pb2.Message:
    return chat_pb2.Message(role=chat_pb2.ROLE_USER, content=list(parts))


def text(value: str) -> chat_pb2.ContentPart:
    return chat_pb2.ContentPart(text=value)


def image(
    url: str, detail: chat_pb2.ImageDetail.ValueType = chat_pb2.IMAGE_DETAIL_AUTO
) -> chat_pb2.ContentPart:
    return chat_pb2.ContentPart(image=chat_pb2.ImagePart(url=url, detail=detail))


def test_ascii_text_costs_a_token_per_four_characters_rounded_up() -> None:
    assert text_tokens("") == 0
    assert text_tokens("abcd") == 1
    assert text_tokens("abcde") == 2
    assert text_tokens("x" * 400) == 100


def test_non_ascii_text_costs_about_a_token_per_cjk_character() -> None:
    assert text_tokens("日本語のテキスト") == 8  # 8 characters, 24 UTF-8 bytes


def test_empty_request_costs_the_reply_priming() -> None:
    assert estimate_prompt_tokens(chat_pb2.ChatInput()) == REPLY_OVERHEAD


def test_each_message_adds_its_overhead_and_text() -> None:
    request = chat_pb2.ChatInput(messages=[user(text("x" * 400)), user(text("hi"))])
    assert estimate_prompt_tokens(request) == REPLY_OVERHEAD + 2 * MESSAGE_OVERHEAD + 100 + 1


def test_image_costs_a_fixed_amount_whatever_its_url_length() -> None:
    short = chat_pb2.ChatInput(messages=[user(image("https://x/y.png"))])
    huge = chat_pb2.ChatInput(messages=[user(image("data:image/png;base64," + "A" * 200_000))])
    expected = REPLY_OVERHEAD + MESSAGE_OVERHEAD + IMAGE_TOKENS
    assert estimate_prompt_tokens(short) == estimate_prompt_tokens(huge) == expected


def test_low_detail_image_costs_less() -> None:
    request = chat_pb2.ChatInput(messages=[user(image("https://x", chat_pb2.IMAGE_DETAIL_LOW))])
    assert (
        estimate_prompt_tokens(request)
        == REPLY_OVERHEAD + MESSAGE_OVERHEAD + IMAGE_LOW_DETAIL_TOKENS
    )


def test_tools_add_their_schema_size() -> None:
    base = chat_pb2.ChatInput(messages=[user(text("hi"))])
    with_tool = chat_pb2.ChatInput()
    with_tool.CopyFrom(base)
    with_tool.tools.add(name="get", description="abcdefgh", parameters_json="{" + "x" * 399 + "}")
    # name 1 + description 2 + parameters 101 (401 chars)
    assert estimate_prompt_tokens(with_tool) == estimate_prompt_tokens(base) + TOOL_OVERHEAD + 104


def test_assistant_tool_calls_and_response_schema_count() -> None:
    base = chat_pb2.ChatInput(messages=[user(text("hi"))])
    request = chat_pb2.ChatInput()
    request.CopyFrom(base)
    request.messages.add(
        role=chat_pb2.ROLE_ASSISTANT,
        tool_calls=[chat_pb2.ToolCall(id="c1", name="get", arguments_json="x" * 40)],
    )
    request.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    request.response_format.json_schema = "y" * 80
    grown = estimate_prompt_tokens(request) - estimate_prompt_tokens(base)
    # call name 1 + arguments 10, schema 20
    assert grown == MESSAGE_OVERHEAD + TOOL_CALL_OVERHEAD + 1 + 10 + 20
