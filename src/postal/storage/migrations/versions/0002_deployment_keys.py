"""Keys made once per deployment: the cursors' MAC key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

A table of its own, added: a release before this one runs against it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployment_keys",
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_deployment_keys")),
    )


def downgrade() -> None:
    op.drop_table("deployment_keys")
