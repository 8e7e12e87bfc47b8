"""Any server speaking the OpenAI chat API (vLLM, Ollama, Together, Groq...) as a Backend.

Same translation as the OpenAI adapter; only the quirks in OpenAICompatibleConfig differ.
Without `stream_options` support the server reports no usage in streams, so the adapter
counts tokens locally (see adapters.token_estimate) and flags the usage estimated.
"""

from __future__ import annotations

import httpx

from adapters.config import OpenAICompatibleConfig
from adapters.openai_chat import OpenAIStyleBackend
from adapters.openai_translate import OpenAIDialect


class OpenAICompatibleBackend(OpenAIStyleBackend):
    provider = "openai_compatible"

    def __init__(
        self,
        config: OpenAICompatibleConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers: dict[str, str] = {}
        secrets: tuple[str, ...] = ()
        if config.api_key is not None:
            key = config.api_key.resolve()
            headers["authorization"] = f"Bearer {key}"
            secrets = (key,)
        self.dialect = OpenAIDialect(
            provider=self.provider,
            max_tokens_field=config.max_tokens_field,
            stream=config.streaming,
            include_usage=config.supports_stream_options,
            supports_tools=config.supports_tools,
            developer_role=config.supports_developer_role,
        )
        super().__init__(
            config,
            headers=headers,
            secrets=secrets,
            streaming=config.streaming,
            transport=transport,
        )
