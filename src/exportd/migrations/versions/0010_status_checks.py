"""CHECK constraints on every status, stage and kind column: even a bad UPDATE cannot
store a value that does not exist

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# the values as of this revision (later revisions that add one replace the constraint)
CHECKS: dict[str, dict[str, list[object]]] = {
    "tokens": {"role": ["reader", "writer", "admin"]},
    "datasets": {"kind": ["sql", "documents", "files"]},
    "tasks": {
        "status": [
            "PENDING", "RUNNING", "CANCELING", "COMPLETED", "COMPLETED_WITH_ERRORS",
            "FAILED", "CANCELED", "TIMEOUT",
        ],
        "file_status": ["PREPARING", "GENERATED", "DELETED", "FAILED"],
        "stage": [0, 10, 20, 30, 40, 50, 60, 70, 80, 90],
        "kind": ["export"],
    },
    "partitions": {
        "status": ["PENDING", "RUNNING", "WAITING", "DONE", "FAILED", "CANCELED"],
        "phase": ["HEADERS", "EXPORT"],
        "stage": [0, 10, 20, 30, 40, 50, 60, 70, 80, 90],
    },
    "files": {"kind": ["data", "manifest"]},
    "notifications": {
        "status": ["PENDING", "DELIVERED", "FAILED"],
        "channel": ["webhook", "email"],
    },
}  # fmt: skip


def _condition(column: str, allowed: list[object]) -> str:
    listed = ", ".join(str(v) if isinstance(v, int) else f"'{v}'" for v in allowed)
    return f"{column} IN ({listed})"


def upgrade() -> None:
    for table, columns in CHECKS.items():
        with op.batch_alter_table(table, recreate="auto") as batch:
            for column, allowed in columns.items():
                batch.create_check_constraint(f"ck_{table}_{column}", _condition(column, allowed))


def downgrade() -> None:
    for table, columns in CHECKS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.drop_constraint(f"ck_{table}_{column}", type_="check")
