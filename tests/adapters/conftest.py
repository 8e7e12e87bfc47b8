"""Fixtures shared by the provider adapter tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.adapters.fakes.server import FakeProvider, running_fake


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    """A fake provider HTTP server on 127.0.0.1, port 0, replaying enqueued cassettes."""
    async with running_fake() as server:
        yield server
