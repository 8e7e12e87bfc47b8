"""`imesh keys`: create, list (by prefix), revoke and rotate tenants' API keys through the
router's AdminService (guarded by the admin key)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from router.cli._common import add_router_arguments, describe, fail, router_credentials, run

if TYPE_CHECKING:
    import grpc

    from imesh.v1 import admin_service_pb2

T = TypeVar("T")

EPILOG = """\
examples:
  export IMESH_ADMIN_KEY=...                    # the router's tenancy.admin_key
  imesh keys create --tenant search --label ci  # prints the key once: keep it
  imesh keys list --tenant search
  imesh keys list --prefix imk_3f9a
  imesh keys revoke 3f9a0c1b2d4e                # every router refuses it within seconds
  imesh keys rotate 3f9a0c1b2d4e --grace 3600   # new key; the old one works one more hour
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "keys",
        help="create, list, revoke and rotate tenants' API keys",
        description=describe(
            "Administer tenants' API keys through the router's AdminService. Keys are "
            "stored only as HMAC digests: a key's full text is printed once, when it is "
            "created or rotated. Needs the admin key."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_router_arguments(parser, api_key=False)
    parser.add_argument(
        "--admin-key",
        metavar="KEY",
        default=os.environ.get("IMESH_ADMIN_KEY"),
        help="the admin key (default: $IMESH_ADMIN_KEY)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="issue a new key for a tenant")
    create.add_argument("--tenant", required=True)
    create.add_argument("--label", default="", help="a note: what the key is for")
    listing = actions.add_parser("list", help="list keys (prefixes only, never keys)")
    listing.add_argument("--tenant", default="", help="only this tenant's keys")
    listing.add_argument("--prefix", default="", help="only keys whose prefix starts so")
    revoke = actions.add_parser("revoke", help="stop a key now")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key id (or its imk_ prefix)")
    rotate = actions.add_parser("rotate", help="new key for the same tenant, old one revoked")
    rotate.add_argument("key_id", metavar="KEY_ID")
    rotate.add_argument(
        "--grace", type=int, default=0, metavar="S", help="seconds the old key keeps working"
    )
    parser.set_defaults(func=run_keys)


def run_keys(args: argparse.Namespace) -> int:
    if not args.admin_key:
        fail("error: the admin key is required (--admin-key or $IMESH_ADMIN_KEY)", 2)
    from imesh.v1 import admin_service_pb2 as pb

    async def call(stub: Any) -> None:
        if args.action == "create":
            made = await stub.CreateKey(pb.CreateKeyRequest(tenant=args.tenant, label=args.label))
            print(f"key for tenant {made.key.tenant} (shown once, store it now):")
            print(made.api_key)
        elif args.action == "list":
            listed = await stub.ListKeys(pb.ListKeysRequest(tenant=args.tenant, prefix=args.prefix))
            print(render(list(listed.keys)))
        elif args.action == "revoke":
            revoked = await stub.RevokeKey(pb.RevokeKeyRequest(key_id=args.key_id))
            print(f"revoked {revoked.key.prefix} (tenant {revoked.key.tenant})")
        else:
            rotated = await stub.RotateKey(
                pb.RotateKeyRequest(key_id=args.key_id, grace_seconds=args.grace)
            )
            print(f"new key for tenant {rotated.key.tenant} (shown once, store it now):")
            print(rotated.api_key)
            print(f"{rotated.old_key.prefix} stops at {_when(rotated.old_key.revoke_time)}")

    run(_with_admin_stub(args.router, router_credentials(args), args.admin_key, call))
    return 0


async def _with_admin_stub(
    router: str,
    credentials: grpc.ChannelCredentials | None,
    admin_key: str,
    body: Callable[[Any], Awaitable[None]],
) -> None:
    """`body` given the AdminService stub, over TLS when `credentials` are given: the admin
    key travels in the clear only to a router the caller chose to reach in plaintext."""
    import grpc

    from imesh.errors import MeshError
    from imesh.v1 import admin_service_pb2_grpc

    channel = (
        grpc.aio.insecure_channel(router)
        if credentials is None
        else grpc.aio.secure_channel(router, credentials)
    )
    async with channel:
        stub = _Authorized(admin_service_pb2_grpc.AdminServiceStub(channel), admin_key)
        try:
            await body(stub)
        except grpc.aio.AioRpcError as err:
            fail(f"error: {MeshError.from_rpc_error(err)}")


class _Authorized:
    """The stub's calls with the admin key and a timeout added."""

    def __init__(self, stub: Any, admin_key: str) -> None:
        self._stub = stub
        self._metadata = (("authorization", f"Bearer {admin_key}"),)

    def __getattr__(self, name: str) -> Callable[[Any], Awaitable[Any]]:
        method = getattr(self._stub, name)
        return lambda request: method(request, metadata=self._metadata, timeout=10.0)


def render(keys: list[admin_service_pb2.ApiKeyInfo]) -> str:
    if not keys:
        return "no keys"
    rows = [("PREFIX", "TENANT", "LABEL", "CREATED", "STATE")]
    for k in keys:
        if k.active:
            state = "active" if not k.HasField("revoke_time") else f"until {_when(k.revoke_time)}"
        else:
            state = "revoked"
        rows.append((k.prefix, k.tenant, k.label, _when(k.create_time), state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _when(stamp: Any) -> str:
    seconds = stamp.ToNanoseconds() / 1e9
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
