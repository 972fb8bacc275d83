from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tollgate_dev.platform import free_port
from tollgate_router.testing import FakeProviderServer


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeProviderServer]:
    server = FakeProviderServer()
    await server.start(free_port())
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=2.0)) as client:
        yield client
