"""JsonBody splices caller JSON text in verbatim, and costs nothing extra without any."""

from __future__ import annotations

import orjson

from adapters.json_body import JsonBody


def test_fragments_are_spliced_verbatim_where_their_placeholders_stood() -> None:
    raw = JsonBody()
    body = {"a": raw.raw(' {"type": "object",  "x": 1.50} '), "b": [raw.raw("[1,2]")], "c": "t"}
    assert raw.encode(body) == b'{"a":{"type": "object",  "x": 1.50},"b":[[1,2]],"c":"t"}'


def test_a_body_without_fragments_is_plain_json_and_draws_no_nonce() -> None:
    raw = JsonBody()
    body = {"model": "m", "messages": [{"role": "user", "content": "\0 hi"}]}
    assert raw.encode(body) == orjson.dumps(body)
    assert raw._nonce == ""


def test_each_body_has_its_own_nonce() -> None:
    first, second = JsonBody(), JsonBody()
    assert first.raw("1") != second.raw("1")
