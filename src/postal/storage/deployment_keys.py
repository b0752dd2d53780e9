"""A secret key per deployment, made on first use and kept in the database for every process.

The cursors' MAC key (`posts/cursors.py`) must be the same in every worker of every pod, or a
cursor one gave out would be refused by the next. Of the stores they all share, the database is
the one that keeps it: Redis may be flushed, restarted or evict it, and then every cursor in
clients' hands would stop working at once, at a different moment in each process. A key derived
from the API token would need a token (loopback-only mode has none) and would change with it;
a setting would be one more secret for operators to make and distribute.

The first process to start inserts a random key; the others, racing it, find the row there (the
primary key refuses a second) and read it. To rotate: delete the row and restart; cursors in
clients' hands are then refused with a 422, and they start from the first page again.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from postal.storage.db import database_errors
from postal.storage.tables import deployment_keys

CURSOR_KEY = "cursors"
KEY_BYTES = 32


async def deployment_key(engine: AsyncEngine, name: str) -> bytes:
    """The key called `name`, made (random, KEY_BYTES long) if this deployment has none yet."""
    with database_errors(engine):
        found = await _read(engine, name)
        if found is not None:
            return found
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    insert(deployment_keys).values(
                        name=name, key=secrets.token_bytes(KEY_BYTES), created_at=datetime.now(UTC)
                    )
                )
        except IntegrityError:
            pass  # another process made it first: theirs is the one
        found = await _read(engine, name)
    if found is None:  # inserted, or found inserted, then deleted at once: try again later
        raise RuntimeError(f"the deployment key {name!r} could not be made")
    return found


async def _read(engine: AsyncEngine, name: str) -> bytes | None:
    async with engine.connect() as connection:
        result = await connection.execute(
            select(deployment_keys.c.key).where(deployment_keys.c.name == name)
        )
        key = result.scalar_one_or_none()
    return None if key is None else bytes(key)
