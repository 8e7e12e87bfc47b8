"""The HTTP each backend keeps: requests with its timeouts and headers, the transport per
protocol, no redirects or cookies, the proxy choice."""

from __future__ import annotations

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from adapters.aiohttp_transport import PreparedAiohttpTransport
from adapters.config import HttpTimeouts, OpenAICompatibleConfig
from adapters.http_client import ProviderHttp, proxy_for
from tests.adapters.fakes.server import Reply, running_fake


def _config(**fields: object) -> OpenAICompatibleConfig:
    return OpenAICompatibleConfig.model_validate(
        {"kind": "openai_compatible", "base_url": "https://api.example.com/v1/", **fields}
    )


async def test_requests_carry_the_timeouts_headers_and_url() -> None:
    timeouts = HttpTimeouts(connect=1.5, read=20, first_byte=10, pool=3)
    http = ProviderHttp(_config(timeouts=timeouts), headers={"x-api-key": "k"})
    try:
        request = http.request("/chat/completions", b"{}", headers={"accept": "text/event-stream"})
        assert request.extensions["timeout"] == {"connect": 1.5, "read": 20, "write": 20, "pool": 3}
        assert str(request.url) == "https://api.example.com/v1/chat/completions"
        assert request.headers["x-api-key"] == "k"
        assert request.headers["accept"] == "text/event-stream"
        assert request.headers["content-type"] == "application/json"
        assert http.headers["accept"] == "*/*"  # a per-call header never sticks
    finally:
        await http.aclose()


async def test_a_request_is_built_whole_and_per_call_headers_stay_with_their_call() -> None:
    http = ProviderHttp(_config(), headers={"authorization": "Bearer k"})
    try:
        sse = http.request("/chat/completions", b'{"a":1}', headers={"accept": "text/event-stream"})
        plain = http.request("/chat/completions", b"{}")
        other = http.request("/messages", b"[1, 2]")
        assert sse.content == b'{"a":1}'
        assert sse.headers["content-length"] == "7"
        assert sse.headers["host"] == "api.example.com"
        assert sse.headers["accept"] == "text/event-stream"
        assert plain.headers["accept"] == "*/*"
        assert plain.headers["content-length"] == "2"
        assert plain.headers["authorization"] == "Bearer k"
        assert str(other.url) == "https://api.example.com/v1/messages"
        assert other.headers["content-length"] == "6"
        assert len(sse.headers.get_list("content-length")) == 1
    finally:
        await http.aclose()


async def test_http1_providers_use_aiohttp_and_http2_ones_httpx_own_transport() -> None:
    http1 = ProviderHttp(_config(max_connections=7), headers={})
    http2 = ProviderHttp(_config(http2=True, max_connections=7), headers={})
    try:
        assert isinstance(http1.transport, PreparedAiohttpTransport)
        assert isinstance(http1.transport, AiohttpTransport)
        assert http1.transport.limits.max_connections == 7
        assert isinstance(http2.transport, httpx.AsyncHTTPTransport)
        pool = http2.transport._pool
        assert pool._max_connections == 7
        assert pool._http2 is True
    finally:
        await http1.aclose()
        await http2.aclose()


async def test_a_redirect_is_an_answer_never_followed_and_cookies_are_never_kept() -> None:
    # A redirect would resend the deployment's key elsewhere; a cookie jar would carry one
    # tenant's provider cookies into another tenant's calls.
    async with running_fake() as fake:
        fake.enqueue(
            Reply(status=307, headers=(("location", "http://elsewhere.invalid/"),)),
            Reply(status=200, headers=(("set-cookie", "session=abc; Path=/"),), body=b"{}"),
            Reply(status=200, body=b"{}"),
        )
        http = ProviderHttp(
            OpenAICompatibleConfig(
                kind="openai_compatible", base_url=f"{fake.base_url}/v1", proxy="direct"
            ),
            headers={},
        )
        try:
            for _ in range(3):
                response = await http.send(http.request("/chat/completions", b"{}"))
                await response.aread()
                await response.aclose()
        finally:
            await http.aclose()
    assert [r.path for r in fake.requests] == ["/v1/chat/completions"] * 3
    assert "cookie" not in fake.requests[2].headers


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
