"""who created a task: the token's id and name (seed 001's domain_id and user_name)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("created_by", sa.String(length=32), nullable=True))
    op.add_column("tasks", sa.Column("created_by_name", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("created_by_name")
        batch.drop_column("created_by")
