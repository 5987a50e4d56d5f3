"""lost workers on their own budget: partitions' lost_count, and when a janitor first saw
a partition's or a coordinator's lease expired

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("partitions") as batch:
        batch.add_column(sa.Column("lost_count", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("lapsed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("coord_lapsed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("coord_lapsed_at")
    with op.batch_alter_table("partitions") as batch:
        batch.drop_column("lapsed_at")
        batch.drop_column("lost_count")
