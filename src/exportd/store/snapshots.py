"""Consistency (docs/consistency.md): the snapshot a task's partitions import, and its
replacement as one move with the partitions it invalidates."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from exportd.errors import NotFound
from exportd.model import PartitionPhase, PartitionStatus, Stage, TaskStatus
from exportd.store.base import utcnow
from exportd.store.partitions import PartitionStore
from exportd.store.slots import SQLITE_COPY_PREFIX, holder_slot_free
from exportd.store.tables import datasets, partitions, tasks

OPEN = (PartitionStatus.PENDING.value, PartitionStatus.RUNNING.value)


class SnapshotStore(PartitionStore):
    def set_consistency(
        self,
        task_id: str,
        token: str,
        gen: int,
        snapshot_id: str | None,
        info: dict[str, Any],
    ) -> bool | None:
        """The coordinator (at plan) records what the task delivers and the snapshot its
        partitions import; `gen` is the generation it read (a replanned task's stale
        holder is then told apart from the current one). False: the lease is lost. None:
        a snapshot would leave its dataset no connection for a partition (other exports'
        holders take the dataset's `max_connections`): nothing is written."""
        now = utcnow()
        with self.write() as conn:
            holds = snapshot_id is not None and not snapshot_id.startswith(SQLITE_COPY_PREFIX)
            if holds and not holder_slot_free(conn, task_id, self.is_postgres):
                return None
            n = conn.execute(
                sa.update(tasks)
                .where(
                    tasks.c.task_id == task_id,
                    tasks.c.coord_token == token,
                    tasks.c.snapshot_gen == gen,
                )
                .values(
                    snapshot_id=snapshot_id,
                    snapshot_gen=gen + 1,
                    consistency=info,
                    update_time=now,
                    version=tasks.c.version + 1,
                )
            ).rowcount
        return n == 1

    def set_dataset_options(
        self, project_id: str, dataset_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """A dataset's options changed (its source protection) in one locked move: the
        claims read the dataset's row (its `max_connections`) at claim time. `change`
        raises to change nothing. Returns the new options."""
        with self.write() as conn:
            find = sa.select(datasets.c.options).where(
                datasets.c.project_id == project_id, datasets.c.dataset_id == dataset_id
            )
            row = conn.execute(find.with_for_update() if self.is_postgres else find).first()
            if row is None:
                raise NotFound(f"dataset {dataset_id!r} not found", "DATASET_NOT_FOUND")
            options = change(dict(row.options or {}))
            conn.execute(
                sa.update(datasets)
                .where(datasets.c.project_id == project_id, datasets.c.dataset_id == dataset_id)
                .values(options=options)
            )
        return options

    def holder_slot_free(self, task_id: str) -> bool:
        """Whether a snapshot's holder for the task would leave its dataset a connection
        for a partition (read only: `set_consistency` checks again, locked)."""
        with self.read() as conn:
            return holder_slot_free(conn, task_id, False)

    def copy_states(self, task_ids: Collection[str]) -> dict[str, tuple[TaskStatus, str | None]]:
        """(status, snapshot id) of those of these tasks that exist (the sweeper, for
        the SQLite copies on its host)."""
        rows = self._task_columns(task_ids, tasks.c.snapshot_id)
        return {t: (TaskStatus(status), snap) for t, (status, snap) in rows.items()}

    def snapshot_state(self, task_id: str) -> tuple[TaskStatus, str | None, int, int, int] | None:
        """(status, snapshot id, generation, open partitions, partitions) of a task, for
        its holder."""
        with self.read() as conn:
            row = conn.execute(
                sa.select(tasks.c.status, tasks.c.snapshot_id, tasks.c.snapshot_gen).where(
                    tasks.c.task_id == task_id
                )
            ).first()
            if row is None:
                return None
            counts = conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.coalesce(
                        sa.func.sum(sa.case((partitions.c.status.in_(OPEN), 1), else_=0)), 0
                    ),
                ).where(partitions.c.task_id == task_id)
            ).one()
        status, gen = TaskStatus(row.status), int(row.snapshot_gen)
        return status, row.snapshot_id, gen, int(counts[1]), int(counts[0])

    def replace_snapshot(
        self,
        task_id: str,
        gen: int,
        snapshot_id: str,
        snapshot: dict[str, Any],
        why: str,
        pending_only: bool = False,
    ) -> bool:
        """The task's snapshot `gen` is lost: from now on its partitions import
        `snapshot_id`, and every partition read under the old one (done, running:
        fenced out, its commit refused) is read again. Only while the task is RUNNING
        with an open partition (`pending_only`: one that has not started), and only
        once per generation: two partitions that both saw the loss replace it once."""
        now = utcnow()
        with self.write() as conn:
            # the partitions first, then the task: the order of heartbeats and commits
            conn.execute(
                sa.select(partitions.c.idx)
                .where(partitions.c.task_id == task_id)
                .order_by(partitions.c.idx)
                .with_for_update()
            ).all()
            row = conn.execute(
                sa.select(tasks.c.consistency)
                .where(
                    tasks.c.task_id == task_id,
                    tasks.c.status == TaskStatus.RUNNING.value,
                    tasks.c.snapshot_gen == gen,
                )
                .with_for_update()
            ).first()
            if row is None:
                return False
            opened = (PartitionStatus.PENDING.value,) if pending_only else OPEN
            waiting = conn.execute(
                sa.select(sa.func.count()).where(
                    partitions.c.task_id == task_id, partitions.c.status.in_(opened)
                )
            ).scalar()
            if not waiting:
                return False
            info = dict(row.consistency or {})
            info["snapshot"] = snapshot
            info["snapshot_restarts"] = int(info.get("snapshot_restarts") or 0) + 1
            info["note"] = why
            conn.execute(
                sa.update(tasks)
                .where(tasks.c.task_id == task_id)
                .values(
                    snapshot_id=snapshot_id,
                    snapshot_gen=gen + 1,
                    consistency=info,
                    update_time=now,
                    version=tasks.c.version + 1,
                )
            )
            self._read_again(conn, task_id, now)
            self._notify(conn)
        return True

    def _read_again(self, conn: sa.Connection, task_id: str, now: datetime) -> None:
        """Every partition of the export pass that is not stopped for good, PENDING again
        at once with nothing of its old reads kept (its part is the task's cleanup's)."""
        conn.execute(
            sa.update(partitions)
            .where(
                partitions.c.task_id == task_id,
                partitions.c.phase == PartitionPhase.EXPORT.value,
                partitions.c.status.in_([*OPEN, PartitionStatus.DONE.value]),
            )
            .values(
                status=PartitionStatus.PENDING.value,
                stage=Stage.NOT_STARTED.value,
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
                not_before=None,
                part_key=None,
                part_sha256=None,
                finished_count=0,
                bytes_written=0,
                attempts=0,
                end_time=None,
                error_code="SNAPSHOT_LOST",
                error_msg="read again under a fresh snapshot",
                update_time=now,
            )
        )
        # the task's counts follow (its progress never goes back)
        sums = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(partitions.c.finished_count), 0),
                sa.func.coalesce(sa.func.sum(partitions.c.bytes_written), 0),
            ).where(partitions.c.task_id == task_id)
        ).one()
        self._touch_task(
            conn, task_id, now, finished_count=int(sums[0]), bytes_written=int(sums[1])
        )
