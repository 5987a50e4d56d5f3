"""Source protection (docs/consistency.md): the connection slots a dataset's
`max_connections` allows its exports, across every worker and host."""

from __future__ import annotations

import sqlalchemy as sa

from exportd.model import ACTIVE_STATUSES, PartitionStatus, TaskStatus
from exportd.store.tables import datasets, partitions, tasks


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
            t.snapshot_id.is_not(None),
        )
    ).scalar()
    return int(running or 0) + int(holders or 0) < int(limit)


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
            t.snapshot_id.is_not(None),
        )
    ).scalar()
    return int(holders or 0) + 1 < int(limit)
