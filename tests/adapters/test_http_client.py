"""The pooled client each HTTP backend keeps: timeouts, redirects, transport, proxy choice."""

from __future__ import annotations

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from adapters.config import HttpTimeouts, OpenAICompatibleConfig
from adapters.http_client import build_http_client, proxy_for


def _config(**fields: object) -> OpenAICompatibleConfig:
    return OpenAICompatibleConfig.model_validate(
        {"kind": "openai_compatible", "base_url": "https://api.example.com/v1/", **fields}
    )


async def test_client_takes_timeouts_and_never_follows_redirects_or_reads_env() -> None:
    timeouts = HttpTimeouts(connect=1.5, read=20, first_byte=10, pool=3)
    client = build_http_client(_config(timeouts=timeouts), headers={"x-api-key": "k"})
    try:
        assert client.timeout.connect == 1.5
        assert client.timeout.read == 20
        assert client.timeout.pool == 3
        assert client.follow_redirects is False
        assert client.trust_env is False  # the proxy is decided once, by build_transport
        assert str(client.base_url) == "https://api.example.com/v1/"
    finally:
        await client.aclose()


async def test_http1_providers_use_aiohttp_and_http2_ones_httpx_own_transport() -> None:
    http1 = build_http_client(_config(max_connections=7), headers={})
    http2 = build_http_client(_config(http2=True, max_connections=7), headers={})
    try:
        assert isinstance(http1._transport, AiohttpTransport)
        assert http1._transport.limits.max_connections == 7
        assert isinstance(http2._transport, httpx.AsyncHTTPTransport)
        pool = http2._transport._pool
        assert pool._max_connections == 7
        assert pool._http2 is True
    finally:
        await http1.aclose()
        await http2.aclose()


def test_the_environment_names_the_proxy_per_scheme_and_no_proxy_bypasses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.corp.example")
    assert proxy_for("https://api.openai.com/v1", "env") == "http://proxy.internal:3128"
    assert proxy_for("http://vllm:8000/v1", "env") is None  # no HTTP_PROXY set
    assert proxy_for("https://llm.corp.example/v1", "env") is None
    assert proxy_for("https://api.openai.com/v1", "direct") is None
    assert proxy_for("https://api.openai.com/v1", "http://other:1") == "http://other:1"


def test_a_proxy_setting_is_env_direct_or_an_http_url() -> None:
    assert _config().proxy == "env"
    with pytest.raises(ValueError, match="proxy is"):
        _config(proxy="socks5://x:1")
