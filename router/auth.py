"""API key check: the caller's key against the configured sha256 hashes, in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import grpc

from imesh.errors import MeshError


class ApiKeyAuth:
    """Admits a key whose sha256 is one of `key_hashes` ("sha256:HEX"); admits any caller
    when the list is empty. Keys are never stored or logged in clear."""

    def __init__(self, key_hashes: Sequence[str]) -> None:
        self._digests = tuple(bytes.fromhex(h.removeprefix("sha256:")) for h in key_hashes)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, api_key: str | None) -> None:
        if not self._digests:
            return
        if not api_key:
            raise MeshError(
                grpc.StatusCode.UNAUTHENTICATED,
                "MISSING_API_KEY",
                "an API key is required: 'authorization: Bearer KEY' or 'x-api-key'",
            )
        digest = hashlib.sha256(api_key.encode("utf-8")).digest()
        # Compare against every hash (no early exit) so timing says nothing about which.
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            raise MeshError(grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY", "invalid API key")


def hash_api_key(api_key: str) -> str:
    """The config form of a key: "sha256:HEX"."""
    return "sha256:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()
