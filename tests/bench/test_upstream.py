"""The bench's zero-delay upstream speaks the OpenAI wire format the relays and the mesh read."""

from __future__ import annotations

import json

import httpx

from bench.upstream import ChatUpstream, answer_text


def _upstream(tokens: int) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=ChatUpstream(tokens))
    return httpx.AsyncClient(transport=transport, base_url="http://upstream")


async def test_upstream_streams_one_chunk_per_token_then_usage_then_done() -> None:
    body = {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "three words here"}],
    }
    async with _upstream(4) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [f.removeprefix("data: ") for f in response.text.split("\n\n") if f]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    texts = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    # Alternating words: no two neighbouring chunks repeat (LiteLLM aborts a repeating stream).
    assert texts == [" hi", " ho", " hi", " ho"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (3, 4, 7)


async def test_upstream_answer_stops_at_max_tokens_with_finish_reason_length() -> None:
    body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    async with _upstream(5) as http:
        response = await http.post("/v1/chat/completions", json=body)
        missing = await http.post("/v1/chat/completions", json={"model": "m"})
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == " hi ho" == answer_text(2)
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 2
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"
