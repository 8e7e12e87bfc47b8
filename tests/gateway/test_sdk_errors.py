"""Every error status the edge returns, as the openai SDK's exception types see them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import openai
import pytest

from imesh.errors import MeshError, Reason
from imesh.v1 import chat_service_pb2, events_pb2

HI = [{"role": "user", "content": "hi"}]


def body_of(exc: openai.APIStatusError) -> dict[str, object]:
    assert isinstance(exc.body, dict)
    assert set(exc.body) == {"message", "type", "param", "code"}
    assert "Traceback" not in str(exc.body["message"])
    return exc.body


async def test_schema_violation_is_bad_request_naming_the_field(edge) -> None:
    client = edge.async_openai()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="fast",
            messages=[{"role": "user", "content": "a"}, {"role": "user", "content": 5}],
        )
    body = body_of(caught.value)
    assert body["type"] == "invalid_request_error"
    assert body["param"] == "messages[1].content"
    assert "x-request-id" in caught.value.response.headers


async def test_n_other_than_one_is_bad_request_on_param_n(edge) -> None:
    client = edge.async_openai()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="fast", messages=HI, n=2)
    assert body_of(caught.value)["param"] == "n"


async def test_router_validation_error_param_is_mapped_to_openai_names(edge) -> None:
    image = [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    client = edge.async_openai()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="fast",
            messages=[{"role": "system", "content": image}],
        )
    assert body_of(caught.value)["param"] == "messages[0].content[0].image_url"


async def test_malformed_json_is_400_with_openai_error_body(edge) -> None:
    async with edge.http() as http:
        response = await http.post(
            "/v1/chat/completions",
            content=b'{"model": "fast",',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_wrong_key_and_missing_key_are_authentication_errors(keyed_edge) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await keyed_edge.async_openai(api_key="sk-wrong").chat.completions.create(
            model="fast", messages=HI
        )
    assert body_of(caught.value)["type"] == "authentication_error"
    async with keyed_edge.http() as http:
        response = await http.post("/v1/chat/completions", json={"model": "fast", "messages": HI})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    # The right key gets through; models are guarded by the same check.
    completion = await keyed_edge.async_openai().chat.completions.create(model="fast", messages=HI)
    assert completion.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        await keyed_edge.async_openai(api_key="sk-wrong").models.list()


async def test_unknown_model_is_not_found_for_chat_and_retrieve(edge) -> None:
    client = edge.async_openai()
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-nope", messages=HI)
    assert body_of(caught.value)["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-nope")


async def test_body_over_the_limit_is_413_before_reaching_the_router(edge) -> None:
    client = edge.async_openai()
    huge = [{"role": "user", "content": "x" * (65 * 1024)}]
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="fast", messages=huge)
    assert caught.value.status_code == 413
    assert body_of(caught.value)["code"] == "request_too_large"
    assert edge.sink.records == []


async def test_chunked_body_over_the_limit_is_413_while_reading(edge) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"x" * 1024

    async with edge.http() as http:
        response = await http.post("/v1/chat/completions", content=chunks())
    assert response.status_code == 413


async def test_upstream_rate_limit_is_rate_limit_error_with_retry_after(edge) -> None:
    client = edge.async_openai()
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="sim-429", messages=HI)
    assert caught.value.response.headers["retry-after"] == "3"  # 2.2 s, rounded up
    assert body_of(caught.value)["type"] == "rate_limit_error"


async def test_failed_upstream_is_502_then_open_breaker_is_503_with_retry_after(edge) -> None:
    client = edge.async_openai()
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="sim-503", messages=HI)
    assert caught.value.status_code == 502
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="sim-503", messages=HI)
    assert caught.value.status_code == 503
    assert body_of(caught.value)["code"] == "all_breakers_open"
    assert int(caught.value.response.headers["retry-after"]) > 0


async def test_upstream_internal_error_is_502(edge) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await edge.async_openai().chat.completions.create(model="sim-500", messages=HI)
    assert caught.value.status_code == 502


async def test_first_token_deadline_is_504(make_edge, config_with) -> None:
    config = config_with(timeouts={"request": 5, "attempt": 5, "first_token": 0.2})
    async with make_edge(config) as edge:
        with pytest.raises(openai.InternalServerError) as caught:
            await edge.async_openai().chat.completions.create(model="sim-slow", messages=HI)
    assert caught.value.status_code == 504


async def test_streaming_request_failing_before_first_token_gets_the_real_status(edge) -> None:
    client = edge.async_openai()
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="sim-429", messages=HI, stream=True)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=HI, stream=True)


async def test_mid_stream_failure_raises_api_error_and_partial_usage_is_accounted(edge) -> None:
    client = edge.async_openai()
    stream = await client.chat.completions.create(
        model="sim-cut", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    texts: list[str] = []
    usages: list[int] = []

    async def consume() -> None:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usages.append(chunk.usage.completion_tokens)

    with pytest.raises(openai.APIError) as caught:
        await consume()
    assert len(texts) == 3
    assert usages == [3]  # the partial usage reaches the caller before the error
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_interrupted"
    assert "interrupted" in caught.value.message
    record = edge.sink.records[-1]
    assert record.deployment == "sim-cut"
    assert record.usage.completion_tokens == 3


async def test_sync_client_sees_mid_stream_failure_as_api_error(edge) -> None:
    def run() -> str:
        stream = edge.openai().chat.completions.create(model="sim-cut", messages=HI, stream=True)
        try:
            for _ in stream:
                pass
        except openai.APIError as exc:
            return type(exc).__name__
        return "no error"

    assert await asyncio.to_thread(run) == "APIError"


S = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "reason", "exc_type", "status"),
    [
        (S.INVALID_ARGUMENT, "INVALID_REQUEST", openai.BadRequestError, 400),
        (S.UNAUTHENTICATED, "INVALID_API_KEY", openai.AuthenticationError, 401),
        (S.PERMISSION_DENIED, "PERMISSION_DENIED", openai.PermissionDeniedError, 403),
        (S.NOT_FOUND, "MODEL_NOT_FOUND", openai.NotFoundError, 404),
        (S.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED", openai.RateLimitError, 429),
        (S.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE", openai.APIStatusError, 413),
        (S.INTERNAL, "BACKEND_CRASHED", openai.InternalServerError, 502),
        (S.UNAVAILABLE, "DRAINING", openai.InternalServerError, 503),
        (S.DEADLINE_EXCEEDED, "CALLER_DEADLINE", openai.InternalServerError, 504),
    ],
)
async def test_each_mesh_error_reaches_the_sdk_as_its_exception_type(
    make_edge, fake_api, code, reason, exc_type, status
) -> None:
    api = fake_api(error=MeshError(code, reason, "scripted failure"))
    async with make_edge(api) as edge:
        client = edge.async_openai()
        for stream in (False, True):
            with pytest.raises(exc_type) as caught:
                await client.chat.completions.create(model="m", messages=HI, stream=stream)
            assert caught.value.status_code == status
            assert body_of(caught.value)["code"] == reason.lower()
        if status == 429:
            assert caught.value.response.headers["retry-after"] == "1"


async def test_a_bug_behind_the_edge_is_an_opaque_500_without_trace(make_edge, fake_api) -> None:
    api = fake_api(error=RuntimeError("secret detail"))
    async with make_edge(api) as edge:
        with pytest.raises(openai.InternalServerError) as caught:
            await edge.async_openai().chat.completions.create(model="m", messages=HI)
    assert caught.value.status_code == 500
    assert "secret detail" not in str(caught.value.body)


async def test_readyz_is_503_when_every_breaker_is_open(make_edge, fake_api) -> None:
    models = chat_service_pb2.ListModelsResponse(
        deployments=[
            chat_service_pb2.DeploymentInfo(
                name="d", breaker_state=chat_service_pb2.BREAKER_STATE_OPEN
            )
        ]
    )
    async with make_edge(fake_api(models=models)) as edge, edge.http() as http:
        response = await http.get("/readyz")
    assert response.status_code == 503


async def test_readyz_is_503_when_the_router_fails(make_edge, fake_api) -> None:
    api = fake_api(error=MeshError(S.UNAVAILABLE, Reason.UNSPECIFIED, "down"))
    async with make_edge(api) as edge, edge.http() as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert "router unreachable" in response.json()["reason"]


async def test_readyz_needs_no_key_when_the_router_requires_keys(keyed_edge) -> None:
    # Probes carry no key: readiness must not depend on one (ListModels would refuse).
    async with keyed_edge.http() as http:
        response = await http.get("/readyz", headers={"authorization": ""})
    assert response.status_code == 200


async def test_error_event_without_usage_still_ends_the_stream_with_error(
    make_edge, fake_api
) -> None:
    events = [
        events_pb2.ChatEvent(start=events_pb2.StreamStart(request_id="r", model="m")),
        events_pb2.ChatEvent(content=events_pb2.ContentDelta(text="par")),
        events_pb2.ChatEvent(
            error=events_pb2.StreamError(code=14, reason="UPSTREAM_INTERRUPTED", message="cut")
        ),
    ]
    api = fake_api(events=events, error=MeshError.of(Reason.UPSTREAM_INTERRUPTED, "cut"))
    async with make_edge(api) as edge, edge.http() as http:
        response = await http.post(
            "/v1/chat/completions", json={"model": "m", "messages": HI, "stream": True}
        )
    frames = [f for f in response.text.split("\n\n") if f]
    assert frames[-1].startswith('data: {"error":')
    assert response.text.count('"error"') == 1
    assert "[DONE]" not in response.text


async def test_a_non_streaming_call_cut_mid_answer_is_502_with_its_partial_usage(edge) -> None:
    async with edge.http() as http:
        response = await http.post(
            "/v1/chat/completions", json={"model": "sim-cut", "messages": HI}
        )
    assert response.status_code == 502
    assert "retry-after" not in response.headers
    body = response.json()
    assert body["error"]["code"] == "upstream_interrupted"
    # the 3 tokens produced before the cut were billed, and the caller is told so
    assert body["usage"]["completion_tokens"] == 3
    assert body["usage"]["prompt_tokens"] > 0
