"""imports: the `import` task kind and an import's rejected rows (`tasks.failed_items`)

Revision ID: 0014
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0011"
branch_labels = None
depends_on = None

KINDS = ["export", "import"]


def _kind_check(kinds: list[str]) -> str:
    return "kind IN (" + ", ".join(f"'{k}'" for k in kinds) + ")"


def upgrade() -> None:
    with op.batch_alter_table("tasks", recreate="auto") as batch:
        batch.add_column(sa.Column("failed_items", sa.JSON, nullable=True))
        batch.drop_constraint("ck_tasks_kind", type_="check")
        batch.create_check_constraint("ck_tasks_kind", _kind_check(KINDS))


def downgrade() -> None:
    with op.batch_alter_table("tasks", recreate="auto") as batch:
        batch.drop_constraint("ck_tasks_kind", type_="check")
        batch.create_check_constraint("ck_tasks_kind", _kind_check(["export"]))
        batch.drop_column("failed_items")
