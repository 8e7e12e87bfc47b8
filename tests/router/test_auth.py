"""API key check: sha256 hashes from config, constant-time compare, typed refusals."""

from __future__ import annotations

import grpc
import pytest

from imesh.api import CallContext
from imesh.errors import MeshError
from router.auth import KEY_ID_CHARS, ApiKeyAuth, hash_api_key
from router.scope import ANONYMOUS
from tests.reliability.mesh_fakes import collect, make_mesh, user_input


async def test_empty_hash_list_admits_any_caller_anonymously() -> None:
    auth = ApiKeyAuth([])
    assert await auth.authenticate(None) is ANONYMOUS
    assert await auth.authenticate("anything") is ANONYMOUS


async def test_a_configured_key_is_admitted_and_named_by_an_id_that_is_not_the_key() -> None:
    auth = ApiKeyAuth([hash_api_key("other"), hash_api_key("s3cret")])
    caller = await auth.authenticate("s3cret")
    assert caller.key_id is not None
    assert len(caller.key_id) == KEY_ID_CHARS
    assert hash_api_key("s3cret").removeprefix("sha256:").startswith(caller.key_id)
    assert (await auth.authenticate("other")).key_id != caller.key_id


@pytest.mark.parametrize(
    ("key", "reason"),
    [(None, "MISSING_API_KEY"), ("", "MISSING_API_KEY"), ("wrong", "INVALID_API_KEY")],
)
async def test_missing_or_wrong_key_is_unauthenticated(key: str | None, reason: str) -> None:
    auth = ApiKeyAuth([hash_api_key("s3cret")])
    with pytest.raises(MeshError) as caught:
        await auth.authenticate(key)
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == reason
    assert "s3cret" not in str(caught.value)


def test_hash_api_key_matches_the_config_pattern() -> None:
    assert hash_api_key("k").startswith("sha256:")
    assert len(hash_api_key("k")) == len("sha256:") + 64


async def test_router_authenticates_before_calling_any_backend() -> None:
    mesh = make_mesh({}, router={"api_key_hashes": [hash_api_key("s3cret")]})
    _, error = await collect(mesh, user_input("dep-a"), CallContext(api_key="nope"))
    assert isinstance(error, MeshError)
    assert error.reason == "INVALID_API_KEY"
    assert mesh.calls() == []
    events, error = await collect(mesh, user_input("dep-a"), CallContext(api_key="s3cret"))
    assert error is None
    assert events[0].HasField("start")
