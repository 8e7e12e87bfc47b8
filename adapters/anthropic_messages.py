"""Anthropic's Messages API as a Backend, always streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import httpx

from adapters.anthropic_translate import AnthropicStreamTranslator, build_messages_body
from adapters.backend import Backend
from adapters.config import AnthropicConfig
from adapters.http_client import build_http_client
from adapters.http_stream import CallBounds, stream_events
from adapters.usage_estimate import TokenCounter
from imesh.v1 import adapter_service_pb2, events_pb2

PROVIDER = "anthropic"


class AnthropicMessagesBackend(Backend):
    def __init__(
        self, config: AnthropicConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        key = config.api_key.resolve()
        self._config = config
        self._secrets = (key,)
        self._counter = TokenCounter(config.tokenizer)
        self._http = build_http_client(
            base_url=config.base_url,
            headers={
                "x-api-key": key,
                "anthropic-version": config.api_version,
                "content-type": "application/json",
                "accept": "text/event-stream",
            },
            timeouts=config.timeouts,
            http2=config.http2,
            max_connections=config.max_connections,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._config.base_url!r})"

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: float | None
    ) -> AsyncIterator[events_pb2.ChatEvent]:
        bounds = CallBounds.start(self._config.timeouts.first_byte, deadline)
        body = build_messages_body(
            request.input,
            request.provider_model,
            default_max_tokens=self._config.default_max_tokens,
        )
        translator = AnthropicStreamTranslator(
            request.input, self._counter, provider=PROVIDER, secrets=self._secrets
        )
        # aclosing: closing this generator must close the HTTP stream now, not at GC.
        async with aclosing(
            stream_events(
                self._http,
                self._http.build_request("POST", "/v1/messages", content=body),
                translator,
                provider=PROVIDER,
                bounds=bounds,
                secrets=self._secrets,
            )
        ) as events:
            async for event in events:
                yield event

    async def aclose(self) -> None:
        await self._http.aclose()
