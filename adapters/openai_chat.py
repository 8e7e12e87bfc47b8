"""OpenAI Chat Completions as a Backend: streaming with provider-reported usage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import httpx

from adapters.backend import Backend
from adapters.config import HttpTimeouts, OpenAIConfig
from adapters.http_client import build_http_client
from adapters.http_errors import upstream_malformed
from adapters.http_stream import MALFORMED, CallBounds, post_json, stream_events
from adapters.openai_translate import (
    OpenAIDialect,
    OpenAIStreamTranslator,
    build_chat_body,
    events_from_completion,
)
from adapters.usage_estimate import TokenCounter
from imesh.v1 import adapter_service_pb2, events_pb2


class OpenAIStyleBackend(Backend):
    """The Chat Completions wire protocol; a dialect says what the server supports."""

    def __init__(
        self,
        *,
        dialect: OpenAIDialect,
        base_url: str,
        headers: dict[str, str],
        secrets: tuple[str, ...],
        timeouts: HttpTimeouts,
        http2: bool,
        max_connections: int,
        tokenizer: str,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._dialect = dialect
        self._secrets = secrets
        self._timeouts = timeouts
        self._counter = TokenCounter(tokenizer)
        self._http = build_http_client(
            base_url=base_url,
            headers={"content-type": "application/json", **headers},
            timeouts=timeouts,
            http2=http2,
            max_connections=max_connections,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(provider={self._dialect.provider!r})"

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: float | None
    ) -> AsyncIterator[events_pb2.ChatEvent]:
        bounds = CallBounds.start(self._timeouts.first_byte, deadline)
        body = build_chat_body(request.input, request.provider_model, self._dialect)
        http_request = self._http.build_request(
            "POST",
            "/chat/completions",
            content=body,
            headers={"accept": "text/event-stream"} if self._dialect.stream else None,
        )
        provider = self._dialect.provider
        if not self._dialect.stream:
            answer = await post_json(
                self._http, http_request, provider=provider, bounds=bounds, secrets=self._secrets
            )
            try:
                whole = await events_from_completion(answer, request.input, self._counter)
            except MALFORMED:
                raise upstream_malformed(provider) from None
            for event in whole:
                yield event
            return
        translator = OpenAIStreamTranslator(
            request.input, self._counter, provider=provider, secrets=self._secrets
        )
        # aclosing: closing this generator must close the HTTP stream now, not at GC.
        async with aclosing(
            stream_events(
                self._http,
                http_request,
                translator,
                provider=provider,
                bounds=bounds,
                secrets=self._secrets,
            )
        ) as events:
            async for event in events:
                yield event

    async def aclose(self) -> None:
        await self._http.aclose()


class OpenAIChatBackend(OpenAIStyleBackend):
    """api.openai.com (or an OpenAI-hosted base URL): `max_completion_tokens`,
    `stream_options.include_usage`, the developer role, tools and response_format."""

    def __init__(
        self, config: OpenAIConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        key = config.api_key.resolve()
        headers = {"authorization": f"Bearer {key}"}
        if config.organization:
            headers["openai-organization"] = config.organization
        super().__init__(
            dialect=OpenAIDialect(provider="openai", stream=config.streaming),
            base_url=config.base_url,
            headers=headers,
            secrets=(key,),
            timeouts=config.timeouts,
            http2=config.http2,
            max_connections=config.max_connections,
            tokenizer=config.tokenizer,
            transport=transport,
        )
