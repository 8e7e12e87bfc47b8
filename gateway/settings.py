"""The REST edge's settings: typed, validated once, and all the edge knows besides ChatAPI."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from imesh.limits import MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_TOOLS


def parse_listen(listen: str) -> tuple[str, int]:
    """ "HOST:PORT" (or "[V6]:PORT") -> (host, port); ValueError naming the input otherwise.

    Port 0 asks the OS for a free port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    if host.startswith("[") != host.endswith("]") or any(c.isspace() for c in host):
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def _checked_listen(listen: str) -> str:
    parse_listen(listen)
    return listen


ListenAddress = Annotated[str, AfterValidator(_checked_listen)]


class GatewaySettings(BaseModel):
    """The REST edge's own settings (the `gateway:` section of a mesh config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: ListenAddress = "127.0.0.1:8080"
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # A request's head (request line and headers) beyond either bound gets 431.
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    max_headers: int = Field(100, ge=8)
    # Bounds on a chat request's shape; past one, a 400 names the setting. The router
    # holds every request to the same defaults (imesh.limits).
    max_messages: int = Field(MAX_MESSAGES, ge=1, le=MAX_MESSAGES)
    max_content_parts: int = Field(MAX_CONTENT_PARTS, ge=1, le=MAX_CONTENT_PARTS)
    max_tools: int = Field(MAX_TOOLS, ge=0, le=MAX_TOOLS)
    # Commas and brackets in a body: bounds the GIL-held JSON parse (see RequestLimits).
    max_json_values: int = Field(100_000, ge=1000)
