"""task kinds and typed plans: `tasks.kind` and `tasks.plan` (what the workers follow),
moved out of the private `_...` keys of the stored request

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PRIVATE = ("_source_columns", "_documents", "_output_prefix", "_notify", "_fingerprint")


def _plan(row: Any, dataset_kind: str | None) -> dict[str, Any]:
    """The plan of a task submitted before plans existed, from its request's private keys."""
    req = dict(row.request or {})
    raw_filter = req.get("filter")
    notify = req.get("_notify") or {}
    return {
        "kind": "export",
        "dataset_id": row.dataset_id,
        "dataset_kind": dataset_kind or ("documents" if req.get("_documents") else "sql"),
        "source_columns": list(req.get("_source_columns") or []),
        "filter": [raw_filter] if isinstance(raw_filter, dict) else list(raw_filter or []),
        "documents": req.get("_documents"),
        "arrays": req.get("arrays") or "json",
        "output": {
            "format": row.format,
            "format_options": req.get("format_options") or {},
            "compression": req.get("compression"),
            "max_rows_per_file": req.get("max_rows_per_file"),
            "max_bytes_per_file": req.get("max_bytes_per_file"),
            "prefix": req.get("_output_prefix") or f"exports/{row.project_id}/{row.task_id}/",
        },
        "notify": {
            "webhook_url": notify.get("webhook_url"),
            "emails": list(notify.get("emails") or []),
        },
        "fingerprint": req.get("_fingerprint") or "",
    }


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("kind", sa.String(20), nullable=False, server_default="export"))
        batch.add_column(sa.Column("plan", sa.JSON, nullable=True))
    conn = op.get_bind()
    meta = sa.MetaData()
    tasks = sa.Table("tasks", meta, autoload_with=conn)
    datasets = sa.Table("datasets", meta, autoload_with=conn)
    kinds = dict(conn.execute(sa.select(datasets.c.dataset_id, datasets.c.kind)).all())
    rows = conn.execute(
        sa.select(
            tasks.c.task_id, tasks.c.project_id, tasks.c.dataset_id, tasks.c.format,
            tasks.c.request,
        )
    ).all()  # fmt: skip
    for row in rows:
        public = {k: v for k, v in (row.request or {}).items() if k not in PRIVATE}
        conn.execute(
            tasks.update()
            .where(tasks.c.task_id == row.task_id)
            .values(plan=_plan(row, kinds.get(row.dataset_id)), request=public)
        )
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("plan", existing_type=sa.JSON, nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("plan")
        batch.drop_column("kind")
