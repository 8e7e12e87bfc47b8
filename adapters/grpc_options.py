"""Options every gRPC server of the mesh starts with: one metadata bound and no shared
ports, so the router, the adapter service and the pool service refuse the same things."""

from __future__ import annotations

from typing import Any, Final

# Request metadata beyond this is refused (RESOURCE_EXHAUSTED): keys, ids, trace context
# fit well within it. Set as gRPC's soft and hard limit alike: between the two, gRPC
# refuses at random.
MAX_METADATA_BYTES: Final = 8 * 1024


def server_options(*extra: tuple[str, Any]) -> list[tuple[str, Any]]:
    """The shared server options, then `extra` (a server's own, e.g. its message size)."""
    return [
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
        # A second server on a taken port must fail, not silently share it.
        ("grpc.so_reuseport", 0),
        *extra,
    ]
