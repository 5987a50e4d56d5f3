"""tasks: the snapshot their partitions import, its generation, the consistency delivered,
and whether a claim skipped them for want of a source connection

Revision ID: 0013
Revises: 0012 (re-chained after main's last, 0012)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("snapshot_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("snapshot_gen", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("consistency", sa.JSON, nullable=True))
        batch.add_column(
            sa.Column("waiting_for_source", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("waiting_for_source")
        batch.drop_column("consistency")
        batch.drop_column("snapshot_gen")
        batch.drop_column("snapshot_id")
