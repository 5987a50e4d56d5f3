"""partitions: the rows that failed within a committed partition (item-level partial
success: their count, and the first of them with key and message)

Revision ID: 0012
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("partitions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("failed_count", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("failed_items", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("partitions", schema=None) as batch_op:
        batch_op.drop_column("failed_items")
        batch_op.drop_column("failed_count")
