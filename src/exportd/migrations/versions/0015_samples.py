"""Samples: the `samples` dataset kind and the `samples` task kind (seed 003's export of
labelled files) join the CHECK constraints of `datasets.kind` and `tasks.kind`

Revision ID: 0015
Revises: 0016
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0016"
branch_labels = None
depends_on = None

# the values as of this revision; a later revision that adds one replaces the constraint
# again (re-chained after another that changed these lists: take the union of both)
BEFORE = {"datasets": ["sql", "documents", "files"], "tasks": ["export", "import"]}
AFTER = {"datasets": [*BEFORE["datasets"], "samples"], "tasks": [*BEFORE["tasks"], "samples"]}


def _condition(allowed: list[str]) -> str:
    return "kind IN (" + ", ".join(f"'{v}'" for v in allowed) + ")"


def _replace(values: dict[str, list[str]]) -> None:
    for table, allowed in values.items():
        with op.batch_alter_table(table, recreate="auto") as batch:
            batch.drop_constraint(f"ck_{table}_kind", type_="check")
            batch.create_check_constraint(f"ck_{table}_kind", _condition(allowed))


def upgrade() -> None:
    _replace(AFTER)


def downgrade() -> None:
    _replace(BEFORE)
