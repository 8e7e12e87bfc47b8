"""API keys: how they look, how they are hashed (HMAC-SHA-256 with a server secret) and
checked (constant time). A raw key exists only in the caller's hands and, once, in the
answer that issued it; stores and logs see its key id and digest."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace

# imk_<key id: 12 hex>_<secret: 43 url-safe base64 chars (32 bytes)>
KEY_PREFIX = "imk_"
_KEY_RE = re.compile(r"^imk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What a store keeps about a key: never the key itself.

    `revoked_at` is a wall-clock time (seconds); a key is valid strictly before it, so a
    rotation can leave the old key a grace period."""

    key_id: str
    tenant: str
    digest: str  # hex HMAC-SHA-256 of the raw key under the server secret
    created_at: float
    revoked_at: float | None = None
    label: str = ""

    @property
    def prefix(self) -> str:
        """What listings show: enough to recognise a key, nothing to use it."""
        return KEY_PREFIX + self.key_id

    def valid_at(self, now: float) -> bool:
        return self.revoked_at is None or now < self.revoked_at

    def revoked(self, at: float) -> KeyRecord:
        if self.revoked_at is not None and self.revoked_at <= at:
            return self  # already revoked earlier: keep the earlier time
        return replace(self, revoked_at=at)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key: `raw` is shown to the caller once and kept nowhere."""

    raw: str
    record: KeyRecord

    def __repr__(self) -> str:  # never the raw key in a log line or traceback
        return f"IssuedKey(key_id={self.record.key_id!r}, tenant={self.record.tenant!r})"


def key_id_of(raw: str) -> str | None:
    """The key id inside a well-formed key; None for anything else."""
    match = _KEY_RE.match(raw)
    return match.group(1) if match else None


class KeyHasher:
    """Digests and checks keys under one server secret (every router must share it)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the key secret must be at least 16 bytes")
        self._secret = secret

    def digest(self, raw: str) -> str:
        return hmac.new(self._secret, raw.encode("utf-8"), hashlib.sha256).hexdigest()

    def matches(self, raw: str, record: KeyRecord) -> bool:
        """Constant time in the key's content: the digest comparison never exits early."""
        return hmac.compare_digest(self.digest(raw), record.digest)

    def issue(self, tenant: str, now: float, label: str = "") -> IssuedKey:
        key_id = secrets.token_hex(6)
        raw = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        return IssuedKey(raw, KeyRecord(key_id, tenant, self.digest(raw), now, None, label))
