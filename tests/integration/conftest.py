"""The posts app over ASGI on a clean database, for the API test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.api_support import Api, running_api


@pytest.fixture
async def api(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> AsyncIterator[Api]:
    async with running_api(database_url, redis_url, key_prefix) as running:
        yield running
