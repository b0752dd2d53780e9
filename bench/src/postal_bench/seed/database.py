"""The posts `postal bench seed` reads: inserted straight into its database with plain SQL.

This is set-up, not what is measured, so it does not go through Postal: one INSERT ... SELECT
over generate_series writes every post (ids 1..N, version 1, a body of a fixed size), a second
their version rows, and the identity sequence is moved past them, so the database looks as if
Postal had created them. Both profiles then read the same rows.
"""

from __future__ import annotations

from asyncpg import exceptions as pg_errors

from postal.cache import mask_url
from postal_bench.errors import BenchError
from postal_bench.imports.database import connect

INSERT_TIMEOUT = 300.0  # s per statement
FILLER = "Postal serves posts from Redis at close to Redis's own speed. "  # a body, repeated

_INSERT_POSTS = """
INSERT INTO posts (id, title, body, author, tags, version, created_at, updated_at)
SELECT g, 'post ' || g, left(repeat($2::text, $3::int / length($2::text) + 1), $3::int),
       'postal-bench', '["bench", "seed"]'::json, 1, now(), now()
FROM generate_series(1, $1::int) AS g
"""
_INSERT_VERSIONS = """
INSERT INTO post_versions (post_id, version, title, body, author, tags, created_at)
SELECT id, version, title, body, author, tags, created_at FROM posts
"""
_MOVE_SEQUENCE = "SELECT setval(pg_get_serial_sequence('posts', 'id'), $1::int)"


async def insert_posts(url: str, count: int, body_chars: int) -> None:
    """Posts 1..`count` (and their version 1) into the empty, migrated database at `url`."""
    async with connect(url, command_timeout=INSERT_TIMEOUT) as connection:
        try:
            async with connection.transaction():
                await connection.execute(_INSERT_POSTS, count, FILLER, body_chars)
                await connection.execute(_INSERT_VERSIONS)
                await connection.execute(_MOVE_SEQUENCE, count)
            await connection.execute("ANALYZE posts")
        except pg_errors.PostgresError as exc:  # said here: `connect` would not name the step
            message = f"cannot insert the bench's posts into {mask_url(url)}: {exc}"
            raise BenchError(message) from exc
