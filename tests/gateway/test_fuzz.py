"""Fuzzed request bodies never get a 5xx: a client's mistake is always a 4xx (or a 200)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio"]) | JSON},
    optional={
        "text": st.text(max_size=10) | JSON,
        "image_url": JSON | st.just({"url": "https://x/y.png", "detail": "low"}),
    },
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "wizard"])
        | JSON,
    },
    optional={
        "content": st.text(max_size=20) | st.lists(PART, max_size=2) | JSON,
        "tool_call_id": st.text(max_size=5) | JSON,
        "name": JSON,
        "tool_calls": JSON,
    },
)
TOOL = st.fixed_dictionaries(
    {"type": st.just("function") | JSON},
    optional={
        "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["f", "get_weather", ""]) | JSON},
            optional={"parameters": JSON | st.just({"type": "object"}), "strict": JSON},
        )
        | JSON
    },
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["fast", "nope", ""]) | JSON,
        "messages": st.lists(MESSAGE, min_size=1, max_size=3) | JSON,
        "temperature": st.floats(-1, 3) | JSON,
        "top_p": st.floats(-1, 2) | JSON,
        "max_tokens": st.integers(-5, 2**40) | JSON,
        "max_completion_tokens": st.integers(-5, 40) | JSON,
        "n": st.integers(0, 3) | JSON,
        "stream": st.booleans() | JSON,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | JSON}) | JSON,
        "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=6) | JSON,
        "seed": st.integers(-(2**64), 2**64) | JSON,
        "user": st.text(max_size=5) | JSON,
        "tools": st.lists(TOOL, max_size=2) | JSON,
        "tool_choice": st.sampled_from(["auto", "none", "required", "any"])
        | st.just({"type": "function", "function": {"name": "f"}})
        | JSON,
        "response_format": st.sampled_from(
            [{"type": "json_object"}, {"type": "text"}, {"type": "json_schema"}]
        )
        | st.just(
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
        )
        | JSON,
        "frequency_penalty": JSON,
    },
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODY)
async def test_fuzzed_json_bodies_never_get_a_5xx(edge, body: dict[str, Any]) -> None:
    http = edge.clients[0] if edge.clients else edge.http()
    response = await http.post("/v1/chat/completions", content=json.dumps(body).encode())
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    elif body.get("stream") is True:
        assert response.text.endswith("data: [DONE]\n\n")


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
async def test_fuzzed_raw_bytes_never_get_a_5xx(edge, raw: bytes) -> None:
    http = edge.clients[0] if edge.clients else edge.http()
    response = await http.post("/v1/chat/completions", content=raw)
    assert 400 <= response.status_code < 500
