"""Source protection (docs/consistency.md): the connection slots a dataset's
`max_connections` allows its exports, across every worker and host."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exportd.model import ACTIVE_STATUSES, PartitionStatus, TaskStatus
from exportd.store.tables import datasets, partitions, tasks

SQLITE_COPY_PREFIX = "sqlite-copy:"
"""A task's snapshot that is a consistent copy of a SQLite database (docs/consistency.md):
it holds no connection on the source, so no slot of the dataset's `max_connections`."""


def _holds_connection(t: Any) -> Any:
    return sa.and_(t.snapshot_id.is_not(None), t.snapshot_id.not_like(SQLITE_COPY_PREFIX + "%"))


def source_slot_free(conn: sa.Connection, task_id: str, postgres: bool) -> bool:
    """Whether a partition of the task may open one more connection on its dataset's
    source: the dataset's `max_connections` counts every running partition of every
    active task of the dataset, on every worker and host, and one connection for each
    running task that holds a snapshot. The dataset's row is locked (PostgreSQL), so
    that two claimers cannot both take the last slot; SQLite serialises claims."""
    t, p = tasks.c, partitions.c
    ds_id = conn.execute(sa.select(t.dataset_id).where(t.task_id == task_id)).scalar()
    if ds_id is None:
        return True
    find = sa.select(datasets.c.options).where(datasets.c.dataset_id == ds_id)
    options = conn.execute(find.with_for_update() if postgres else find).scalar()
    limit = (options or {}).get("max_connections")
    if not limit:
        return True
    active = sorted(s.value for s in ACTIVE_STATUSES)
    running = conn.execute(
        sa.select(sa.func.count())
        .select_from(partitions.join(tasks, t.task_id == p.task_id))
        .where(
            t.dataset_id == ds_id,
            t.status.in_(active),
            p.status == PartitionStatus.RUNNING.value,
        )
    ).scalar()
    holders = conn.execute(
        sa.select(sa.func.count()).where(
            t.dataset_id == ds_id,
            t.status == TaskStatus.RUNNING.value,
            _holds_connection(t),
        )
    ).scalar()
    if int(running or 0) + int(holders or 0) < int(limit):
        return True
    # a limit lowered (PATCH) below what a running snapshot export needs: its holder is
    # open already; one partition of the dataset at a time goes on, so that it ends
    own = conn.execute(
        sa.select(sa.func.count()).where(
            t.task_id == task_id, t.status == TaskStatus.RUNNING.value, _holds_connection(t)
        )
    ).scalar()
    return not running and bool(own)


def holder_slot_free(conn: sa.Connection, task_id: str, postgres: bool) -> bool:
    """Whether the task may hold a snapshot on its dataset's source and still leave a
    connection for a partition: the holders of the dataset's other running tasks and
    this one stay below its `max_connections` (the dataset's row is locked)."""
    t = tasks.c
    ds_id = conn.execute(sa.select(t.dataset_id).where(t.task_id == task_id)).scalar()
    find = sa.select(datasets.c.options).where(datasets.c.dataset_id == ds_id)
    options = conn.execute(find.with_for_update() if postgres else find).scalar()
    limit = (options or {}).get("max_connections")
    if not limit:
        return True
    holders = conn.execute(
        sa.select(sa.func.count()).where(
            t.dataset_id == ds_id,
            t.task_id != task_id,
            t.status == TaskStatus.RUNNING.value,
            _holds_connection(t),
        )
    ).scalar()
    return int(holders or 0) + 1 < int(limit)
