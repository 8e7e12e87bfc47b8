"""HTTPS_PROXY / HTTP_PROXY / NO_PROXY reach the upstream transport (issue 8), with a real
forwarding proxy on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.config import OpenAICompatibleConfig
from adapters.openai_compatible import OpenAICompatibleBackend
from tests.adapters.fakes.helpers import collect, generate, text_of
from tests.adapters.fakes.proxy import FakeProxy, running_proxy
from tests.adapters.fakes.server import FakeProvider, Reply

_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeProxy]:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    async with running_proxy() as running:
        yield running


async def _call(fake: FakeProvider, **fields: object) -> str:
    fake.enqueue(Reply.cassette("openai/stream_text"))
    config = OpenAICompatibleConfig.model_validate(
        {"kind": "openai_compatible", "base_url": f"{fake.base_url}/v1", **fields}
    )
    backend = OpenAICompatibleBackend(config)
    try:
        events, error = await collect(backend, generate())
    finally:
        await backend.aclose()
    assert error is None
    return text_of(events)


async def test_http_proxy_from_the_environment_carries_the_call(
    fake: FakeProvider, proxy: FakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert await _call(fake) == "Hello there!"
    assert proxy.request_lines == [f"POST {fake.base_url}/v1/chat/completions"]


async def test_no_proxy_sends_the_call_direct(
    fake: FakeProvider, proxy: FakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert await _call(fake) == "Hello there!"
    assert proxy.request_lines == []


async def test_a_configured_proxy_wins_over_the_environment(
    fake: FakeProvider, proxy: FakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "*")
    assert await _call(fake, proxy=proxy.url) == "Hello there!"
    assert len(proxy.request_lines) == 1
