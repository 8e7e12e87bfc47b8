"""Every numeric field held to OpenAI's documented range, and the request's shape bounded."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from gateway.translate_request import RequestLimits, parse_chat_body, translate_chat
from imesh.errors import MeshError

USER = {"role": "user", "content": "hi"}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": [USER], **fields}


def refusal(data: dict[str, Any], limits: RequestLimits | None = None) -> tuple[str, str]:
    with pytest.raises(MeshError) as caught:
        translate_chat(data, limits or RequestLimits())
    err = caught.value
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    violation = err.field_violations[0]
    return violation.field, violation.description


@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [
        ("temperature", 2.01, 2),
        ("temperature", -0.1, 0),
        ("top_p", 1.5, 1),
        ("presence_penalty", 3, 2),
        ("presence_penalty", -2.5, -2),
        ("frequency_penalty", 2.1, -2.0),
        ("max_tokens", 0, 1),
        ("max_completion_tokens", -5, 1),
        ("top_logprobs", 21, 20),
        ("seed", 2**63, -(2**63)),
        ("n", 2, 1),
    ],
)
def test_each_numeric_field_is_held_to_openais_range(field: str, bad: Any, good: Any) -> None:
    extra = {"logprobs": True} if field == "top_logprobs" else {}
    assert refusal(body(**{field: bad}, **extra))[0] == field
    translate_chat(body(**{field: good}, **extra))


@pytest.mark.parametrize("field", ["presence_penalty", "frequency_penalty", "temperature"])
def test_a_boolean_is_not_a_number(field: str) -> None:
    assert refusal(body(**{field: True})) == (field, "must be a number")


def test_logit_bias_values_are_between_minus_100_and_100() -> None:
    translate_chat(body(logit_bias={"50256": -100, "15339": 100}))
    assert refusal(body(logit_bias={"50256": -101}))[0] == "logit_bias.50256"
    assert refusal(body(logit_bias={"hello": 1}))[0] == "logit_bias"
    assert refusal(body(logit_bias=[1]))[0] == "logit_bias"


def test_top_logprobs_needs_logprobs() -> None:
    assert refusal(body(top_logprobs=2)) == ("top_logprobs", "requires logprobs to be true")
    assert refusal(body(logprobs="yes"))[0] == "logprobs"


def test_more_than_four_stop_sequences_are_refused_at_the_edge() -> None:
    assert refusal(body(stop=["a", "b", "c", "d", "e"])) == ("stop", "at most 4 stop sequences")


def test_too_many_messages_get_a_400_naming_the_limit() -> None:
    field, why = refusal(body(messages=[USER] * 6), RequestLimits(max_messages=5))
    assert field == "messages"
    assert why == "at most 5 allowed (gateway.max_messages), got 6"


def test_too_many_content_parts_get_a_400_naming_the_limit() -> None:
    parts = [{"type": "text", "text": "x"}] * 2
    data = body(messages=[USER, {"role": "user", "content": parts}] * 2)
    field, why = refusal(data, RequestLimits(max_content_parts=3))
    assert field == "messages[].content"
    assert why == "at most 3 allowed (gateway.max_content_parts), got 4"


def test_a_body_of_too_many_json_values_is_refused_before_it_is_parsed() -> None:
    data = json.dumps(body(padding=[[]] * 101)).encode()
    with pytest.raises(MeshError) as caught:
        parse_chat_body(data, RequestLimits(max_json_values=100))
    assert "too many JSON values: more than 100 (gateway.max_json_values)" in caught.value.message


def test_too_many_tools_get_a_400_naming_the_limit() -> None:
    tools = [{"type": "function", "function": {"name": f"t{i}"}} for i in range(129)]
    field, why = refusal(body(tools=tools))
    assert field == "tools"
    assert why == "at most 128 allowed (gateway.max_tools), got 129"
