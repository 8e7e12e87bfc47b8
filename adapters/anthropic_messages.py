"""Anthropic's Messages API as a Backend: streaming, or one whole message for a unary caller."""

from __future__ import annotations

import httpx
import orjson

from adapters.anthropic_translate import AnthropicStreamTranslator, build_messages_body
from adapters.backend import Batch
from adapters.config import AnthropicConfig
from adapters.http_backend import HttpBackend
from imesh.v1 import adapter_service_pb2


class AnthropicMessagesBackend(HttpBackend):
    provider = "anthropic"
    path = "/v1/messages"
    answers_whole = True

    def __init__(
        self, config: AnthropicConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        key = config.api_key.resolve()
        self._default_max_tokens = config.default_max_tokens
        super().__init__(
            config,
            headers={"x-api-key": key, "anthropic-version": config.api_version},
            secrets=(key,),
            transport=transport,
        )

    def body(self, request: adapter_service_pb2.GenerateRequest, *, stream: bool) -> bytes:
        return build_messages_body(
            request.input,
            request.provider_model,
            default_max_tokens=self._default_max_tokens,
            stream=stream,
        )

    def translator(self, request: adapter_service_pb2.GenerateRequest) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(
            request.input, self._counter, provider=self.provider, secrets=self._secrets
        )

    async def whole_answer(
        self, body: bytes, request: adapter_service_pb2.GenerateRequest
    ) -> Batch:
        answer = orjson.loads(body)
        if not isinstance(answer, dict):
            raise TypeError("the answer is not an object")
        return await self.translator(request).whole(answer)
