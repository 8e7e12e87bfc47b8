"""The edge reads the caller's key as the router does: a bearer token, else `x-api-key`."""

from __future__ import annotations

from tests.gateway.conftest import KEY, Edge

BODY = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
CHAT = "/v1/chat/completions"


async def test_x_api_key_is_accepted_as_the_key(keyed_edge: Edge) -> None:
    resp = await keyed_edge.http().post(CHAT, json=BODY, headers={"x-api-key": KEY})
    assert resp.status_code == 200, resp.text


async def test_the_401_for_no_key_names_both_ways_to_send_one(keyed_edge: Edge) -> None:
    resp = await keyed_edge.http().post(CHAT, json=BODY)
    assert resp.status_code == 401
    message = resp.json()["error"]["message"]
    assert "authorization: Bearer" in message
    assert "x-api-key" in message


async def test_a_bearer_token_wins_over_x_api_key(keyed_edge: Edge) -> None:
    headers = {"authorization": "Bearer sk-wrong", "x-api-key": KEY}
    resp = await keyed_edge.http().post(CHAT, json=BODY, headers=headers)
    assert resp.status_code == 401
    assert resp.json()["error"]["message"] == "invalid API key"


async def test_a_malformed_x_api_key_is_refused_without_calling_the_router(
    keyed_edge: Edge,
) -> None:
    resp = await keyed_edge.http().post(CHAT, json=BODY, headers={b"x-api-key": "sk-été".encode()})
    assert resp.status_code == 401
    assert resp.json()["error"]["message"] == "the API key is malformed"
