"""Is the database there? One cheap round trip, bounded, for /readyz."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def database_reachable(engine: AsyncEngine, timeout: float) -> str | None:
    """None when `SELECT 1` answers within `timeout`; otherwise why not (no secrets in it)."""
    try:
        async with asyncio.timeout(timeout), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except Exception as exc:
        return type(exc).__name__
    return None
