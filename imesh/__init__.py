"""inference-mesh's typed Python client: `imesh.Client` speaks the mesh's gRPC Chat API."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imesh.api import CallContext
    from imesh.client import Client, SyncClient, assistant, system, tls_credentials, user
    from imesh.errors import MeshError

__all__ = [
    "CallContext",
    "Client",
    "MeshError",
    "SyncClient",
    "assistant",
    "system",
    "tls_credentials",
    "user",
]

# Loaded on first use so `import imesh` (and `import imesh.v1...`) stays cheap: no grpc.
_HOMES = {
    "CallContext": "imesh.api",
    "Client": "imesh.client",
    "SyncClient": "imesh.client",
    "assistant": "imesh.client",
    "system": "imesh.client",
    "tls_credentials": "imesh.client",
    "user": "imesh.client",
    "MeshError": "imesh.errors",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'imesh' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted(__all__)
