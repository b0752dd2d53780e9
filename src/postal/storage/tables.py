"""The schema as SQLAlchemy Core tables: the one description of it the repository queries.

Core, not the ORM: the repository maps rows to the frozen domain dataclasses itself, so there is
no identity map or unit of work between a request and its one or two statements. The MetaData
carries a naming convention so every constraint has a predictable name, which Alembic needs to
alter or drop it later (SQLite especially, whose batch mode rebuilds tables by name).

The migrations in `migrations/versions` create the same schema; a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

from postal.posts.models import MAX_AUTHOR_CHARS, MAX_TAG_CHARS, MAX_TITLE_CHARS

NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only makes an INTEGER PRIMARY KEY the rowid (and only a rowid can be AUTOINCREMENT, which
# never reuses the id of a deleted row); it is 64-bit there anyway.
PostId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, always timezone-aware UTC on the Python side.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so it stores naive UTC text and
    this type puts the UTC back on the way out. A naive datetime is refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, got {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


posts = Table(
    "posts",
    metadata,
    Column("id", PostId, Identity(), primary_key=True),
    Column("title", String(MAX_TITLE_CHARS), nullable=False),
    Column("body", Text, nullable=False),
    Column("author", String(MAX_AUTHOR_CHARS), nullable=False),
    Column("tags", JSON, nullable=False),  # a list of strings
    Column("version", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint("version >= 1", name="version_positive"),
    # The author filter's index: equality on author, then newest first by id, the keyset.
    Index("ix_posts_author_id", "author", "id"),
    sqlite_autoincrement=True,
)

post_versions = Table(
    "post_versions",
    metadata,
    Column(
        "post_id",
        PostId,
        ForeignKey(posts.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("version", Integer, primary_key=True),
    Column("title", String(MAX_TITLE_CHARS), nullable=False),
    Column("body", Text, nullable=False),
    Column("author", String(MAX_AUTHOR_CHARS), nullable=False),
    Column("tags", JSON, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    CheckConstraint("version >= 1", name="version_positive"),
)

# A post's current tags, one row each (duplicates once), for the tag filter: the `tags` column
# stays what a post is read from; this table is what a list is filtered by. Kept in step by every
# write of a post (the repository's and the import's, in the same transaction); a delete takes
# its rows by the cascade. The author is copied here so that a filter by both is one index range
# too. Why a table rather than JSONB with a GIN index: the same schema and the same keyset query
# on SQLite (which has no index on JSON), and a B-tree on (tag, post_id) reads a page of a
# popular tag newest first and stops, where a GIN index finds every post with the tag and sorts.
post_tags = Table(
    "post_tags",
    metadata,
    Column("post_id", PostId, ForeignKey(posts.c.id, ondelete="CASCADE"), primary_key=True),
    Column("tag", String(MAX_TAG_CHARS), primary_key=True),
    Column("author", String(MAX_AUTHOR_CHARS), nullable=False),
    Index("ix_post_tags_tag_post_id", "tag", "post_id"),
    Index("ix_post_tags_tag_author_post_id", "tag", "author", "post_id"),
)

# Keys made once per deployment and shared by all its processes through the database (the one
# store they all have): the cursors' MAC key (`storage/deployment_keys.py`).
deployment_keys = Table(
    "deployment_keys",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("key", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)
