"""OpenAI Chat Completions as a Backend: streaming with provider-reported usage."""

from __future__ import annotations

import dataclasses
import functools

import httpx

from adapters.backend import Batch
from adapters.config import OpenAIConfig
from adapters.http_backend import HttpBackend
from adapters.openai_translate import (
    OpenAIDialect,
    OpenAIStreamTranslator,
    build_chat_body,
    events_from_completion,
)
from imesh.v1 import adapter_service_pb2


class OpenAIStyleBackend(HttpBackend):
    """The Chat Completions wire protocol; a dialect says what the server supports."""

    path = "/chat/completions"
    answers_whole = True
    dialect: OpenAIDialect

    def body(self, request: adapter_service_pb2.GenerateRequest, *, stream: bool) -> bytes:
        dialect = self.dialect if stream == self.dialect.stream else self._other_dialect
        return build_chat_body(request.input, request.provider_model, dialect)

    @functools.cached_property
    def _other_dialect(self) -> OpenAIDialect:
        return dataclasses.replace(self.dialect, stream=not self.dialect.stream)

    def translator(self, request: adapter_service_pb2.GenerateRequest) -> OpenAIStreamTranslator:
        return OpenAIStreamTranslator(
            request.input, self._counter, provider=self.provider, secrets=self._secrets
        )

    async def whole_answer(
        self, body: bytes, request: adapter_service_pb2.GenerateRequest
    ) -> Batch:
        return await events_from_completion(body, request.input, self._counter)


class OpenAIChatBackend(OpenAIStyleBackend):
    """api.openai.com (or an OpenAI-hosted base URL): `max_completion_tokens`,
    `stream_options.include_usage`, the developer role, tools and response_format."""

    provider = "openai"

    def __init__(
        self, config: OpenAIConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        key = config.api_key.resolve()
        headers = {"authorization": f"Bearer {key}"}
        if config.organization:
            headers["openai-organization"] = config.organization
        self.dialect = OpenAIDialect(provider=self.provider, stream=config.streaming)
        super().__init__(
            config,
            headers=headers,
            secrets=(key,),
            streaming=config.streaming,
            transport=transport,
        )
