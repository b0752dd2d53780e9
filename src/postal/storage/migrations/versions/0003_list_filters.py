"""The list's filters: an index on posts by author, and post_tags, backfilled from posts.tags.

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-15

Added only: a release before this one runs against the upgraded schema unchanged, except that its
writes do not keep post_tags in step; so upgrade with no older release still writing
(docs/operations.md says how to rebuild the table if one did). The backfill is one INSERT ...
SELECT over the JSON arrays, in the migration's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POST_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# One row per distinct tag of each post, with its author. `tags` is `json` on PostgreSQL (a
# JSON array of strings, as every write stores it) and JSON text on SQLite.
BACKFILL = {
    "postgresql": (
        "INSERT INTO post_tags (post_id, tag, author)"
        " SELECT DISTINCT posts.id, tag.value, posts.author"
        " FROM posts, json_array_elements_text(posts.tags) AS tag(value)"
    ),
    "sqlite": (
        "INSERT INTO post_tags (post_id, tag, author)"
        " SELECT DISTINCT posts.id, tag.value, posts.author"
        " FROM posts, json_each(posts.tags) AS tag"
    ),
}


def upgrade() -> None:
    op.create_index("ix_posts_author_id", "posts", ["author", "id"])
    op.create_table(
        "post_tags",
        sa.Column("post_id", POST_ID, nullable=False),
        sa.Column("tag", sa.String(50), nullable=False),
        sa.Column("author", sa.String(100), nullable=False),
        sa.ForeignKeyConstraint(
            ["post_id"],
            ["posts.id"],
            name=op.f("fk_post_tags_post_id_posts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("post_id", "tag", name=op.f("pk_post_tags")),
    )
    op.create_index("ix_post_tags_tag_post_id", "post_tags", ["tag", "post_id"])
    op.create_index("ix_post_tags_tag_author_post_id", "post_tags", ["tag", "author", "post_id"])
    op.execute(BACKFILL[op.get_bind().dialect.name])


def downgrade() -> None:
    op.drop_table("post_tags")
    op.drop_index("ix_posts_author_id", table_name="posts")
