"""The store's tables (SQLAlchemy Core). Alembic's revisions must produce exactly these."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from exportd.model import (
    Channel,
    FileStatus,
    NotificationStatus,
    PartitionPhase,
    PartitionStatus,
    Role,
    Stage,
    TaskStatus,
)
from exportd.model.plan import DatasetKind, TaskKind

metadata = sa.MetaData()


def one_of(table: str, column: str, values: Iterable[object]) -> sa.CheckConstraint:
    """A CHECK that `column` holds one of the enum's values, so that not even a bad
    UPDATE can store a status, stage or kind that does not exist."""
    listed = ", ".join(str(v) if isinstance(v, int) else f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=f"ck_{table}_{column}")


def values(enum: Iterable[object]) -> list[object]:
    return [getattr(m, "value", m) for m in enum]


TS = sa.DateTime(timezone=True)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("project_id", sa.String(64), primary_key=True),
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    # signs the project's webhooks (Standard Webhooks `whsec_...`); shown once when made
    sa.Column("webhook_secret", sa.String(100), nullable=True),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("token_id", sa.String(32), nullable=False, unique=True),
    sa.Column(
        "project_id",
        sa.String(64),
        sa.ForeignKey("projects.project_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=True),
    sa.Column("create_time", TS, nullable=False),
    # refused (401) from then on; NULL: never expires
    sa.Column("expires_time", TS, nullable=True),
    # when it was last accepted, written at most once a minute
    sa.Column("last_used_time", TS, nullable=True),
    one_of("tokens", "role", values(Role)),
)

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("dataset_id", sa.String(64), primary_key=True),
    sa.Column(
        "project_id",
        sa.String(64),
        sa.ForeignKey("projects.project_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("table_name", sa.String(400), nullable=True),
    sa.Column("query", sa.Text, nullable=True),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("fields", sa.JSON, nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    sa.UniqueConstraint("project_id", "name", name="uq_datasets_project_name"),
    one_of("datasets", "kind", values(DatasetKind)),
)

# connection profiles the server administrator registered: a URL held here (never shown
# by the API) and the projects that may register datasets on it (["*"]: every project)
connections = sa.Table(
    "connections",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("projects", sa.JSON, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("project_id", sa.String(64), nullable=False),
    sa.Column("dataset_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("file_status", sa.String(16), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False, server_default="export"),
    sa.Column("plan", sa.JSON, nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("file_name", sa.String(255), nullable=False),
    sa.Column("columns", sa.JSON, nullable=False),
    sa.Column("parallelism", sa.Integer, nullable=False),
    sa.Column("allow_partial", sa.Boolean, nullable=False),
    sa.Column("max_error_rate", sa.Float, nullable=False),
    sa.Column("timeout_seconds", sa.Integer, nullable=True),
    sa.Column("expires_in", sa.Integer, nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("total_count", sa.BigInteger, nullable=True),
    sa.Column("total_is_estimate", sa.Boolean, nullable=False),
    sa.Column("finished_count", sa.BigInteger, nullable=False),
    sa.Column("failed_count", sa.BigInteger, nullable=False),
    sa.Column("bytes_written", sa.BigInteger, nullable=False),
    sa.Column("progress", sa.Float, nullable=False),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_msg", sa.Text, nullable=True),
    sa.Column("is_download", sa.Boolean, nullable=False),
    sa.Column("download_count", sa.Integer, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.Column("start_time", TS, nullable=True),
    sa.Column("end_time", TS, nullable=True),
    sa.Column("deadline", TS, nullable=True),
    sa.Column("file_expires_at", TS, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    # who created it: the token's id ("admin" for the administrator) and name
    sa.Column("created_by", sa.String(32), nullable=True),
    sa.Column("created_by_name", sa.String(200), nullable=True),
    # coordinator ("master task") work: due flag plus its own lease
    sa.Column("coordinator_due", sa.Boolean, nullable=False),
    sa.Column("coord_not_before", TS, nullable=True),
    sa.Column("coord_owner", sa.String(200), nullable=True),
    sa.Column("coord_token", sa.String(64), nullable=True),
    sa.Column("coord_expires_at", TS, nullable=True),
    sa.Column("coord_attempts", sa.Integer, nullable=False),
    sa.Column("coord_errors", sa.Integer, nullable=False, server_default="0"),
    # when a janitor first saw the coordinator lease expired (takeover only a lease later)
    sa.Column("coord_lapsed_at", TS, nullable=True),
    # when a partition of the task was last claimed: whose turn it is (fair claiming)
    sa.Column("last_claim_time", TS, nullable=True),
    # consistency: the snapshot partitions import, its generation, what was delivered,
    # and whether a claim skipped it for want of a source connection (max_connections)
    sa.Column("snapshot_id", sa.String(200), nullable=True),
    sa.Column("snapshot_gen", sa.Integer, nullable=False, server_default="0"),
    sa.Column("consistency", sa.JSON, nullable=True),
    sa.Column("waiting_for_source", sa.Boolean, nullable=False, server_default=sa.false()),
    # an import's rejected rows (the first ones, in file order): line, column, reason
    sa.Column("failed_items", sa.JSON, nullable=True),
    sa.UniqueConstraint("project_id", "idempotency_key", name="uq_tasks_idempotency"),
    sa.Index("ix_tasks_project_create", "project_id", "create_time"),
    sa.Index("ix_tasks_coordinator_due", "coordinator_due"),
    sa.Index("ix_tasks_status", "status"),
    sa.Index("ix_tasks_file_expiry", "file_status", "file_expires_at"),
    sa.Index("ix_tasks_end_time", "end_time"),  # retention of finished tasks
    one_of("tasks", "status", values(TaskStatus)),
    one_of("tasks", "file_status", values(FileStatus)),
    one_of("tasks", "stage", values(Stage)),
    one_of("tasks", "kind", values(TaskKind)),
)

partitions = sa.Table(
    "partitions",
    metadata,
    sa.Column(
        "task_id",
        sa.String(64),
        sa.ForeignKey("tasks.task_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("bounds", sa.JSON, nullable=False),
    # header pass (documents -> CSV): which pass, and its committed key set
    sa.Column("phase", sa.String(16), nullable=False, server_default="EXPORT"),
    sa.Column("header", sa.JSON, nullable=True),
    sa.Column("finished_count", sa.BigInteger, nullable=False),
    sa.Column("bytes_written", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    # leases lost with their worker (not failed attempts), and when a janitor first saw
    # the current lease expired (it is reclaimed only a whole lease after that)
    sa.Column("lost_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lapsed_at", TS, nullable=True),
    sa.Column("lease_owner", sa.String(200), nullable=True),
    sa.Column("lease_token", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", TS, nullable=True),
    sa.Column("not_before", TS, nullable=True),
    sa.Column("part_key", sa.Text, nullable=True),
    sa.Column("part_sha256", sa.String(64), nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_msg", sa.Text, nullable=True),
    sa.Column("start_time", TS, nullable=True),
    sa.Column("end_time", TS, nullable=True),
    sa.Column("update_time", TS, nullable=True),
    # item-level partial success: rows of a committed partition that failed (bisection),
    # their count and the first of them ({"key", "error_msg"})
    sa.Column("failed_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("failed_items", sa.JSON, nullable=True),
    sa.Index("ix_partitions_status", "status"),
    one_of("partitions", "status", values(PartitionStatus)),
    one_of("partitions", "phase", values(PartitionPhase)),
    one_of("partitions", "stage", values(Stage)),
)

files = sa.Table(
    "files",
    metadata,
    sa.Column(
        "task_id",
        sa.String(64),
        sa.ForeignKey("tasks.task_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("media_type", sa.String(100), nullable=False),
    sa.Column("create_time", TS, nullable=False),
    one_of("files", "kind", ["data", "manifest"]),
)

# the outbox: one row per notification of a task's terminal status, written in the same
# transaction as that status; workers deliver them under a short lease, with retries
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("notification_id", sa.String(40), primary_key=True),
    sa.Column(
        "task_id",
        sa.String(64),
        sa.ForeignKey("tasks.task_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("project_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("payload", sa.JSON, nullable=True),  # frozen at the first attempt
    sa.Column("attempt_log", sa.JSON, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("next_attempt_at", TS, nullable=True),
    sa.Column("lease_token", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", TS, nullable=True),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.Column("delivered_time", TS, nullable=True),
    sa.Index("ix_notifications_due", "status", "next_attempt_at"),
    one_of("notifications", "status", values(NotificationStatus)),
    one_of("notifications", "channel", values(Channel)),
)
