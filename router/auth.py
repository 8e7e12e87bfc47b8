"""The authenticate stage: the caller's key against the configured sha256 hashes, in
constant time, giving the request's Caller."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Protocol

from imesh.errors import MeshError, Reason
from router.scope import ANONYMOUS, Caller

# Hex digits of the key's sha256 that name it in records and logs (never the key).
KEY_ID_CHARS = 12


class Authenticator(Protocol):
    """The authenticate stage's seam: a caller's raw key (None: none sent) to a Caller,
    or a MeshError (UNAUTHENTICATED). Lifecycle: one per router, shared by requests;
    never logs or keeps the raw key."""

    async def authenticate(self, api_key: str | None) -> Caller: ...


class ApiKeyAuth:
    """Admits a key whose sha256 is one of `key_hashes` ("sha256:HEX"); admits any caller
    when the list is empty. Keys are never stored or logged in clear."""

    def __init__(self, key_hashes: Sequence[str]) -> None:
        self._digests = tuple(bytes.fromhex(h.removeprefix("sha256:")) for h in key_hashes)

    async def authenticate(self, api_key: str | None) -> Caller:
        if not self._digests:
            return ANONYMOUS
        if not api_key:
            raise MeshError.of(
                Reason.MISSING_API_KEY,
                "an API key is required: 'authorization: Bearer KEY' or 'x-api-key'",
            )
        digest = hashlib.sha256(api_key.encode("utf-8")).digest()
        # Compare against every hash (no early exit) so timing says nothing about which.
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            raise MeshError.of(Reason.INVALID_API_KEY, "invalid API key")
        return Caller(key_id=digest.hex()[:KEY_ID_CHARS])


def hash_api_key(api_key: str) -> str:
    """The config form of a key: "sha256:HEX"."""
    return "sha256:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()
