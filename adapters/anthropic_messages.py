"""Anthropic's Messages API as a Backend, always streaming."""

from __future__ import annotations

import httpx

from adapters.anthropic_translate import AnthropicStreamTranslator, build_messages_body
from adapters.config import AnthropicConfig
from adapters.http_backend import HttpBackend
from imesh.v1 import adapter_service_pb2


class AnthropicMessagesBackend(HttpBackend):
    provider = "anthropic"
    path = "/v1/messages"

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
        # Always a stream: `answers_whole` is False, so `stream` is always True here.
        return build_messages_body(
            request.input, request.provider_model, default_max_tokens=self._default_max_tokens
        )

    def translator(self, request: adapter_service_pb2.GenerateRequest) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(
            request.input, self._counter, provider=self.provider, secrets=self._secrets
        )
