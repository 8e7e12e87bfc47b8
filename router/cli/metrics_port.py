"""The metrics port: `GET /metrics` over HTTP/1.1 on the running event loop, one exchange
per connection.

On the loop, not in a thread (as prometheus_client's own server would): the router's
figures are plain numbers updated on the loop, and a scrape then reads them between two
steps of the request path, never in the middle of one.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Seconds a scraper gets to send its request head.
READ_TIMEOUT_S = 5.0


async def start_metrics_port(registry: CollectorRegistry, listen: str) -> asyncio.Server:
    """Serve `registry` on `listen` ("host:port"; port 0 picks one); ValueError for a
    malformed address, OSError when it cannot be bound."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"metrics address must be HOST:PORT, got {listen!r}")
    return await asyncio.start_server(_MetricsHandler(registry), host.strip("[]"), int(port))


class _MetricsHandler:
    """One HTTP/1.1 exchange per connection: `GET /metrics` gets the registry in the
    Prometheus text format, anything else a 404; then the connection closes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method == b"GET" and path == b"/metrics":
                status, ctype, body = (
                    b"200 OK",
                    CONTENT_TYPE_LATEST.encode(),
                    generate_latest(self._registry),
                )
            else:
                status, ctype, body = b"404 Not Found", b"text/plain", b"not found\n"
            writer.write(
                b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, ctype, len(body))
            )
            writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a half-open or garbled connection: drop it
        finally:
            writer.close()
