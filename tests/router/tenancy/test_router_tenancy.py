"""Tenancy in the router's pipeline: authenticate (key -> tenant), admit (model allowed,
limits reserved), settle (the reservation to the real usage), one usage event per attempt."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.registry import build_backends
from imesh.api import CallContext
from imesh.errors import MeshError, Reason
from imesh.v1 import chat_pb2
from router.config import MeshConfig, parse_config
from router.service import ChatRouter
from router.tenancy.tenancy import Tenancy


def config(overload: dict[str, int] | None = None, **limits: int) -> MeshConfig:
    return parse_config(
        {
            "providers": {
                "sim": {
                    "kind": "simulated",
                    "ttft_ms": 1,
                    "tokens_per_second": 5000,
                    "completion_tokens": 5,
                }
            },
            "deployments": [
                {
                    "name": "fast",
                    "provider": "sim",
                    "model": "fast-1",
                    "max_output_tokens": 50,
                    "price": {"input": 1, "output": 2},
                }
            ],
            "aliases": {"auto": {"candidates": ["fast"]}},
            "tenancy": {
                "tenants": {
                    "team-a": {"models": ["fast"], "limits": limits},
                    "team-b": {"priority": 9},
                },
                "overload": overload or {},
            },
        }
    )


@pytest.fixture
async def mesh(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ChatRouter, Tenancy]]:
    cfg = config(**getattr(request, "param", {}))
    assert cfg.tenancy is not None
    tenancy = Tenancy.build(cfg.tenancy, cfg)
    await tenancy.start()
    router = ChatRouter(
        cfg,
        build_backends(cfg.providers),
        sinks=[tenancy.recorder],
        authenticator=tenancy.authenticator,
        admitters=[tenancy.admitter],
    )
    try:
        yield router, tenancy
    finally:
        await router.aclose()
        await tenancy.aclose()


def ask(model: str, max_tokens: int = 8) -> chat_pb2.ChatInput:
    return chat_pb2.ChatInput(
        model=model,
        max_tokens=max_tokens,
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="hi")])
        ],
    )


async def refusal(router: ChatRouter, request: chat_pb2.ChatInput, key: str | None) -> MeshError:
    with pytest.raises(MeshError) as caught:
        await router.chat(request, CallContext(api_key=key))
    return caught.value


async def test_keys_name_the_tenant_and_the_tenants_models_bound_what_it_may_call(
    mesh: tuple[ChatRouter, Tenancy],
) -> None:
    router, tenancy = mesh
    key_a = (await tenancy.keys.create("team-a")).raw
    assert (await refusal(router, ask("fast"), None)).reason is Reason.MISSING_API_KEY
    assert (await refusal(router, ask("fast"), "imk_nope")).reason is Reason.INVALID_API_KEY
    denied = await refusal(router, ask("auto"), key_a)
    assert denied.reason is Reason.PERMISSION_DENIED
    answer = await router.chat(ask("fast"), CallContext(api_key=key_a))
    assert answer.usage.completion_tokens > 0


@pytest.mark.parametrize("mesh", [{"requests_per_minute": 2}], indirect=True)
async def test_over_the_rpm_limit_the_router_refuses_with_retry_info_and_figures(
    mesh: tuple[ChatRouter, Tenancy],
) -> None:
    router, tenancy = mesh
    key_a = (await tenancy.keys.create("team-a")).raw
    key_b = (await tenancy.keys.create("team-b")).raw
    for _ in range(2):
        await router.chat(ask("fast"), CallContext(api_key=key_a))
    limited = await refusal(router, ask("fast"), key_a)
    assert limited.reason is Reason.RATE_LIMITED
    assert limited.code.name == "RESOURCE_EXHAUSTED"
    assert 0 < (limited.retry_after or 0) <= 60
    assert limited.metadata["x-ratelimit-limit-requests"] == "2"
    assert limited.metadata["x-ratelimit-remaining-requests"] == "0"
    await router.chat(ask("fast"), CallContext(api_key=key_b))  # another tenant: unaffected


@pytest.mark.parametrize("mesh", [{"tokens_per_day": 100}], indirect=True)
async def test_reservations_settle_to_the_real_usage(mesh: tuple[ChatRouter, Tenancy]) -> None:
    router, tenancy = mesh
    key_a = (await tenancy.keys.create("team-a")).raw
    # Reserves the prompt estimate + 60 tokens; spends far less, so the next one fits.
    for _ in range(2):
        await router.chat(ask("fast", max_tokens=60), CallContext(api_key=key_a))
        await router.settled()  # the router settles right after the answer
        await tenancy.admitter.settled()  # settlements run in the background
    assert tenancy.admitter.in_flight == 0
    refused = await refusal(router, ask("fast", max_tokens=100), key_a)
    assert refused.reason is Reason.QUOTA_EXCEEDED


async def test_every_attempt_is_one_usage_event_for_the_callers_tenant(
    mesh: tuple[ChatRouter, Tenancy],
) -> None:
    router, tenancy = mesh
    key_a = (await tenancy.keys.create("team-a")).raw
    key_b = (await tenancy.keys.create("team-b")).raw
    spent: dict[str, int] = {"team-a": 0, "team-b": 0}
    for key, tenant, model in (
        (key_a, "team-a", "fast"),
        (key_b, "team-b", "auto"),
        (key_a, "team-a", "fast"),
    ):
        answer = await router.chat(ask(model), CallContext(api_key=key))
        spent[tenant] += answer.usage.cost_micros
    await router.settled()  # each request's usage is settled right after its answer
    today = dt.datetime.now(dt.UTC).date()
    rows: dict[str, Any] = {t: await tenancy.usage.usage(t, today, today) for t in spent}
    assert [(r.model, r.attempts) for r in rows["team-a"]] == [("fast", 2)]
    assert [(r.model, r.attempts) for r in rows["team-b"]] == [("auto", 1)]
    assert {t: sum(r.cost_micros for r in rows[t]) for t in spent} == spent


@pytest.mark.parametrize("mesh", [{"overload": {"shed_in_flight": 1}}], indirect=True)
async def test_under_overload_the_lowest_priority_is_shed_first(
    mesh: tuple[ChatRouter, Tenancy],
) -> None:
    router, tenancy = mesh
    key_a = (await tenancy.keys.create("team-a")).raw  # priority 1
    key_b = (await tenancy.keys.create("team-b")).raw  # priority 9
    stream = router.chat_stream(ask("fast"), CallContext(api_key=key_b))
    await anext(stream)  # one request in flight
    try:
        shed = await refusal(router, ask("fast"), key_a)
        assert shed.reason is Reason.OVERLOADED
        assert shed.retry_after is not None
        await router.chat(ask("fast"), CallContext(api_key=key_b))  # protected: admitted
    finally:
        await stream.aclose()
    await router.settled()  # its slot comes back as it settles, right after its answer
    await router.chat(ask("fast"), CallContext(api_key=key_a))  # load gone: admitted again
