"""Partitions under leases: claims, heartbeats with progress, fenced commits, failures,
cancels, the header pass's commit and the opening of the export pass."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from exportd.model import (
    ACTIVE_STATUSES,
    Lease,
    Partition,
    PartitionPhase,
    PartitionStatus,
    Stage,
    Task,
    TaskStatus,
)
from exportd.store.base import (
    NO_COORDINATOR,
    later,
    partition_from_row,
    task_from_row,
    utcnow,
)
from exportd.store.coordination import CoordinationStore
from exportd.store.slots import source_slot_free
from exportd.store.tables import partitions, tasks


@dataclass(frozen=True)
class HeartbeatReply:
    task_status: TaskStatus


OPEN_PARTITIONS = (PartitionStatus.PENDING, PartitionStatus.RUNNING)


def _fair_tasks(due: Any) -> sa.Select[Any]:
    """The RUNNING tasks with a partition `due`, in the order they get the next worker:
    first the project with the fewest partitions running now, then the one served least
    recently (the latest claim among its active tasks is the oldest; never served comes
    first), then the oldest task. So one project's 1,000 queued partitions take turns
    with another's single export, also with one worker, where nothing runs at claim time.

    Every measure is taken over small sets (the active tasks, the running partitions,
    one index probe per task), never over the pending partitions or finished history."""
    p, t = partitions.c, tasks.c
    served = (
        sa.select(t.project_id.label("project_id"), sa.func.max(t.last_claim_time).label("at"))
        .where(t.status.in_(sorted(s.value for s in ACTIVE_STATUSES)))
        .group_by(t.project_id)
        .cte("served")
    )
    owner = tasks.alias("owner")
    busy = (
        sa.select(owner.c.project_id.label("project_id"), sa.func.count().label("running"))
        .select_from(partitions.join(owner, owner.c.task_id == p.task_id))
        .where(p.status == PartitionStatus.RUNNING.value)
        .group_by(owner.c.project_id)
        .cte("busy")
    )
    waiting = sa.exists().where(p.task_id == t.task_id, due)
    return (
        sa.select(t.task_id)
        .join(served, served.c.project_id == t.project_id)
        .outerjoin(busy, busy.c.project_id == t.project_id)
        .where(t.status == TaskStatus.RUNNING.value, waiting)
        .order_by(
            sa.func.coalesce(busy.c.running, 0),
            served.c.at.asc().nulls_first(),
            t.create_time,
            t.task_id,
        )
    )


def _task_live(task_id: str, now: datetime) -> Any:
    """The task may still take a partition's work: active (RUNNING, or CANCELING whose
    done parts are harmless) and not past its deadline. Fences every commit and every
    recorded progress, so that nothing changes after a terminal move."""
    t = tasks.c
    return (
        sa.select(t.task_id)
        .where(
            t.task_id == task_id,
            t.status.in_(sorted(s.value for s in ACTIVE_STATUSES)),
            sa.or_(t.deadline.is_(None), t.deadline >= now),
        )
        .exists()
    )


def _stage_of_pass() -> Any:
    """The stage a claimed partition shows: 20 in its header pass, 60 when exporting."""
    return sa.case(
        (partitions.c.phase == PartitionPhase.HEADERS.value, Stage.CREATING_HEADERS.value),
        else_=Stage.EXPORTING.value,
    )


class PartitionStore(CoordinationStore):
    # ---- partition leases ---------------------------------------------------------------

    def claim_partition(
        self, owner: str, lease_seconds: float
    ) -> tuple[Task, Partition, Lease] | None:
        """Claim a runnable partition of a RUNNING task, fairly across projects: the
        tasks are tried in their fair order (`_fair_tasks`), and of a task the first
        partition no other claimer holds (SKIP LOCKED on PostgreSQL; `BEGIN IMMEDIATE`
        serialises claims on SQLite)."""
        now = utcnow()
        due = sa.and_(
            partitions.c.status == PartitionStatus.PENDING.value,
            sa.or_(partitions.c.not_before.is_(None), partitions.c.not_before <= now),
        )
        with self.write() as conn:
            found = None
            waiting: list[str] = []
            for task_id in conn.execute(_fair_tasks(due)).scalars():
                first = (
                    sa.select(partitions.c.idx)
                    .where(partitions.c.task_id == task_id, due)
                    .order_by(partitions.c.idx)
                    .limit(1)
                )
                idx = conn.execute(self._skip_locked(first)).scalar()
                if idx is not None and not source_slot_free(conn, task_id, self.is_postgres):
                    waiting.append(task_id)  # its source's connections are all taken
                    continue
                if idx is not None:
                    found = (task_id, idx)
                    break
            if waiting:
                conn.execute(
                    sa.update(tasks)
                    .where(tasks.c.task_id.in_(waiting), tasks.c.waiting_for_source.is_(False))
                    .values(waiting_for_source=True, version=tasks.c.version + 1)
                )
            if found is None:
                return None
            task_id, idx = found
            token = uuid.uuid4().hex
            expires = later(lease_seconds, now)
            ok = self._move_partition(
                conn, task_id, idx, PartitionStatus.RUNNING, now,
                lease_owner=owner, lease_token=token, lease_expires_at=expires,
                attempts=partitions.c.attempts + 1, stage=_stage_of_pass(),
                finished_count=0, bytes_written=0, start_time=now, not_before=None,
                failed_count=0, failed_items=None,
            )  # fmt: skip
            if not ok:
                return None
            prow = conn.execute(
                sa.select(partitions).where(
                    partitions.c.task_id == task_id, partitions.c.idx == idx
                )
            ).one()
            trow = conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).one()
            self._touch_task(conn, task_id, now, last_claim_time=now, waiting_for_source=False)
        part = partition_from_row(prow._mapping)
        return task_from_row(trow._mapping), part, Lease(owner, token, expires, part.attempts)

    def _fence(self, task_id: str, index: int, token: str) -> list[Any]:
        return [
            partitions.c.task_id == task_id,
            partitions.c.idx == index,
            partitions.c.lease_token == token,
            partitions.c.status == PartitionStatus.RUNNING.value,
        ]

    def heartbeat(
        self,
        task_id: str,
        index: int,
        token: str,
        lease_seconds: float,
        finished: int,
        bytes_written: int,
    ) -> HeartbeatReply | None:
        """Renew the lease and record progress. None: the lease is lost (stop at once).

        A task past its deadline ends TIMEOUT in this very transaction, and the progress
        of a task that is no longer RUNNING is not recorded: the reply's status stops
        the partition at once, and its counts stay as they were at the terminal move."""
        now = utcnow()
        live = _task_live(task_id, now)
        with self.write() as conn:
            n = conn.execute(
                sa.update(partitions)
                .where(*self._fence(task_id, index, token))
                .values(
                    lease_expires_at=later(lease_seconds, now),
                    finished_count=sa.case((live, finished), else_=partitions.c.finished_count),
                    bytes_written=sa.case((live, bytes_written), else_=partitions.c.bytes_written),
                    update_time=now,
                )
            ).rowcount
            if n != 1:
                return None
            if self._time_out_late(conn, now, task_id):
                self._notify(conn)
            status = self._refresh_task_progress(conn, task_id, now)
        return HeartbeatReply(status)

    def record_progress(
        self, task_id: str, index: int, token: str, finished: int, bytes_written: int
    ) -> TaskStatus | None:
        """A partition's counts between two heartbeats (about once a second): one fenced
        update of its own row (no lock on the task row, no sum: a status read adds the
        running partitions' counts up), and the task's `version` moves so that watchers
        (SSE, long polls) see it. Never recorded once the task is no longer live. None:
        the lease is lost; else the task's status (the next heartbeat handles a deadline)."""
        now = utcnow()
        with self.write() as conn:
            n = conn.execute(
                sa.update(partitions)
                .where(*self._fence(task_id, index, token), _task_live(task_id, now))
                .values(finished_count=finished, bytes_written=bytes_written, update_time=now)
            ).rowcount
            if n == 1:
                moved = conn.execute(
                    sa.update(tasks)
                    .where(
                        tasks.c.task_id == task_id,
                        tasks.c.status == TaskStatus.RUNNING.value,
                    )
                    .values(version=tasks.c.version + 1)
                ).rowcount
                if moved == 1:
                    return TaskStatus.RUNNING
            else:
                held = conn.execute(
                    sa.select(partitions.c.idx).where(*self._fence(task_id, index, token))
                ).first()
                if held is None:
                    return None
            status = conn.execute(
                sa.select(tasks.c.status).where(tasks.c.task_id == task_id)
            ).scalar_one()
        return TaskStatus(status)

    def _refresh_task_progress(
        self, conn: sa.Connection, task_id: str, now: datetime
    ) -> TaskStatus:
        # the task row first, locked: two partitions' heartbeats would otherwise each sum
        # the other's count as it was before, and the last to commit would write a total
        # that lacks the other's rows (PostgreSQL's read committed; SQLite serialises)
        row = conn.execute(
            sa.select(tasks.c.status, tasks.c.total_count, tasks.c.progress)
            .where(tasks.c.task_id == task_id)
            .with_for_update()
        ).one()
        sums = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(partitions.c.finished_count), 0),
                sa.func.coalesce(sa.func.sum(partitions.c.bytes_written), 0),
            ).where(partitions.c.task_id == task_id)
        ).one()
        if row.status != TaskStatus.RUNNING.value:  # ended or canceling: counts stay
            return TaskStatus(row.status)
        finished, written = int(sums[0]), int(sums[1])
        progress = row.progress
        if row.total_count:
            progress = max(progress, min(99.0, 100.0 * finished / row.total_count))
        self._touch_task(
            conn, task_id, now, finished_count=finished, bytes_written=written, progress=progress
        )
        return TaskStatus(row.status)

    def commit_partition(
        self,
        task_id: str,
        index: int,
        token: str,
        part_key: str,
        rows: int,
        bytes_written: int,
        sha256: str,
        failed_items: list[dict[str, Any]] | None = None,
        failed_count: int = 0,
    ) -> bool:
        """Fenced commit: the part becomes part of the result only if this lease still holds.
        When it is the last partition to stop, the coordinator's finishing work becomes due
        in the same transaction. `failed_count` rows of the partition failed and are not in
        the part (`failed_items`: the first of them, with key and message)."""
        now = utcnow()
        with self.write() as conn:
            ok = self._move_partition(
                conn, task_id, index, PartitionStatus.DONE, now,
                *self._fence(task_id, index, token)[2:], _task_live(task_id, now),
                stage=Stage.COMPLETED.value, part_key=part_key, part_sha256=sha256,
                finished_count=rows, bytes_written=bytes_written, end_time=now,
                lease_token=None, lease_expires_at=None, error_code=None, error_msg=None,
                failed_count=failed_count, failed_items=failed_items,
            )  # fmt: skip
            if ok:
                self._after_partition_stop(conn, task_id, now)
                return True
            self._stop_if_task_ended(conn, task_id, index, token, now)
            # run again after a COMMIT whose answer was lost: the part (its key is unique
            # to the attempt) is already the partition's; the caller must keep it
            row = conn.execute(
                sa.select(partitions.c.status, partitions.c.part_key).where(
                    partitions.c.task_id == task_id, partitions.c.idx == index
                )
            ).first()
            return row is not None and tuple(row) == (PartitionStatus.DONE.value, part_key)

    def fail_partition(
        self, task_id: str, index: int, token: str, code: str, msg: str, retry_in: float | None
    ) -> bool:
        """A failed attempt: back to PENDING after `retry_in` seconds, or FAILED for good."""
        now = utcnow()
        with self.write() as conn:
            if retry_in is not None:
                ok = self._move_partition(
                    conn, task_id, index, PartitionStatus.PENDING, now,
                    *self._fence(task_id, index, token)[2:],
                    stage=Stage.NOT_STARTED.value, lease_token=None, lease_expires_at=None,
                    not_before=later(retry_in, now), error_code=code, error_msg=msg,
                )  # fmt: skip
                if ok:
                    self._notify(conn)
            else:
                ok = self._move_partition(
                    conn, task_id, index, PartitionStatus.FAILED, now,
                    *self._fence(task_id, index, token)[2:],
                    lease_token=None, lease_expires_at=None, end_time=now,
                    error_code=code, error_msg=msg,
                )  # fmt: skip
                if ok:
                    self._after_partition_stop(conn, task_id, now)
        return ok

    def hand_back_partition(
        self, task_id: str, index: int, token: str, code: str, msg: str, retry_in: float
    ) -> bool:
        """An attempt that could not reach a service it needs (the storage): back to
        PENDING after `retry_in` seconds without counting as an attempt."""
        now = utcnow()
        with self.write() as conn:
            ok = self._move_partition(
                conn, task_id, index, PartitionStatus.PENDING, now,
                *self._fence(task_id, index, token)[2:],
                stage=Stage.NOT_STARTED.value, lease_token=None, lease_expires_at=None,
                not_before=later(retry_in, now), error_code=code, error_msg=msg,
                attempts=sa.case(
                    (partitions.c.attempts > 0, partitions.c.attempts - 1), else_=0
                ),
            )  # fmt: skip
            if ok:
                self._notify(conn)
        return ok

    def release_partition(self, task_id: str, index: int, token: str) -> bool:
        """A worker shutting down hands its lease back (fenced): PENDING again at once,
        neither an attempt nor a loss counted, so that another worker claims it now."""
        now = utcnow()
        with self.write() as conn:
            ok = self._move_partition(
                conn, task_id, index, PartitionStatus.PENDING, now,
                *self._fence(task_id, index, token)[2:],
                stage=Stage.NOT_STARTED.value, lease_token=None, lease_expires_at=None,
                not_before=None,
                attempts=sa.case(
                    (partitions.c.attempts > 0, partitions.c.attempts - 1), else_=0
                ),
            )  # fmt: skip
            if ok:
                self._notify(conn)
        return ok

    def cancel_partition(self, task_id: str, index: int, token: str) -> bool:
        now = utcnow()
        with self.write() as conn:
            ok = self._move_partition(
                conn, task_id, index, PartitionStatus.CANCELED, now,
                *self._fence(task_id, index, token)[2:],
                lease_token=None, lease_expires_at=None, end_time=now,
            )  # fmt: skip
            if ok:
                self._after_partition_stop(conn, task_id, now)
        return ok

    def _stop_if_task_ended(
        self, conn: sa.Connection, task_id: str, index: int, token: str, now: datetime
    ) -> None:
        """A commit refused because its task is no longer live (past its deadline, or
        ended): time the task out if it is late, and cancel this partition at once rather
        than leaving its lease to lapse before the task's cleanup can run."""
        self._time_out_late(conn, now, task_id)
        ended = sa.select(tasks.c.task_id).where(
            tasks.c.task_id == task_id,
            tasks.c.status.not_in(sorted(s.value for s in ACTIVE_STATUSES)),
        )
        if self._move_partition(
            conn, task_id, index, PartitionStatus.CANCELED, now,
            *self._fence(task_id, index, token)[2:], ended.exists(),
            lease_token=None, lease_expires_at=None, end_time=now,
        ):  # fmt: skip
            self._notify(conn)

    def _after_partition_stop(self, conn: sa.Connection, task_id: str, now: datetime) -> None:
        """When no partition is open any more (PENDING or RUNNING), the coordinator becomes
        due: to merge the headers if some partitions wait for them, else to finish."""
        status = self._refresh_task_progress(conn, task_id, now)
        counts: dict[str, int] = dict(
            conn.execute(
                sa.select(partitions.c.status, sa.func.count())
                .where(partitions.c.task_id == task_id)
                .group_by(partitions.c.status)
            ).all()
        )
        open_count = sum(counts.get(s.value, 0) for s in OPEN_PARTITIONS)
        if open_count or status not in ACTIVE_STATUSES:
            return
        extra: dict[str, Any] = {}
        if status is TaskStatus.RUNNING and counts.get(PartitionStatus.WAITING.value):
            extra = self._headers_all_in(conn, task_id, now, len(counts) == 1)
        self._touch_task(conn, task_id, now, coordinator_due=True, coord_not_before=None, **extra)
        self._notify(conn)

    def _headers_all_in(
        self, conn: sa.Connection, task_id: str, now: datetime, all_waiting: bool
    ) -> dict[str, Any]:
        """Every header pass is in: the waiting partitions show stage 50 and the task
        stage 30 until the coordinator has merged. When no partition failed, the header
        passes counted every document: the total becomes exact."""
        conn.execute(
            sa.update(partitions)
            .where(
                partitions.c.task_id == task_id,
                partitions.c.status == PartitionStatus.WAITING.value,
            )
            .values(stage=Stage.WAIT_MASTER_MERGE.value, update_time=now)
        )
        values: dict[str, Any] = {"stage": Stage.MERGING_HEADERS.value}
        if all_waiting:
            headers = conn.execute(
                sa.select(partitions.c.header).where(partitions.c.task_id == task_id)
            ).scalars()
            values["total_count"] = sum(int((h or {}).get("documents", 0)) for h in headers)
            values["total_is_estimate"] = False
        return values

    # ---- header pass (documents exported to a flat format) ------------------------------

    def commit_headers(
        self, task_id: str, index: int, token: str, keys: list[str], documents: int,
        cache: dict[str, Any] | None = None,
    ) -> bool:  # fmt: skip
        """Fenced commit of a partition's header pass: its key set is stored and it waits
        (stage 40) for the others. The last one to commit makes the merge due.
        `cache`: where the pass left its rendered rows for the export pass, if it did."""
        now = utcnow()
        header: dict[str, Any] = {"keys": keys, "documents": documents}
        if cache is not None:
            header["cache"] = cache
        with self.write() as conn:
            ok = self._move_partition(
                conn, task_id, index, PartitionStatus.WAITING, now,
                *self._fence(task_id, index, token)[2:], _task_live(task_id, now),
                partitions.c.phase == PartitionPhase.HEADERS.value,
                stage=Stage.WAIT_PARALLEL_HEADERS.value,
                header=header,
                lease_token=None, lease_expires_at=None, error_code=None, error_msg=None,
            )  # fmt: skip
            if ok:
                self._after_partition_stop(conn, task_id, now)
                return True
            self._stop_if_task_ended(conn, task_id, index, token, now)
            # run again after a COMMIT whose answer was lost: our header is the one kept
            # (with a cache, its folder is unique to the attempt)
            kept = conn.execute(
                sa.select(partitions.c.header).where(
                    partitions.c.task_id == task_id,
                    partitions.c.idx == index,
                    partitions.c.status != PartitionStatus.RUNNING.value,
                )
            ).scalar()
            return kept == header

    def open_export(self, task_id: str, token: str, columns: list[str]) -> bool:
        """The coordinator's merge: the task gets its merged header and moves to stage 60;
        the waiting partitions open for their export pass (with fresh attempts), in one
        transaction. The coordinator's lease is released."""
        now = utcnow()
        with self.write() as conn:
            n = conn.execute(
                sa.update(tasks)
                .where(
                    tasks.c.task_id == task_id,
                    tasks.c.coord_token == token,
                    tasks.c.status == TaskStatus.RUNNING.value,
                )
                .values(
                    stage=Stage.EXPORTING.value,
                    columns=columns,
                    coordinator_due=False,
                    **NO_COORDINATOR,
                    update_time=now,
                    version=tasks.c.version + 1,
                )
            ).rowcount
            if n != 1:
                return False
            for idx in conn.execute(
                sa.select(partitions.c.idx).where(
                    partitions.c.task_id == task_id,
                    partitions.c.status == PartitionStatus.WAITING.value,
                )
            ).scalars():
                self._move_partition(
                    conn, task_id, idx, PartitionStatus.PENDING, now,
                    # stage 50 until a worker claims it for export (60): a partition
                    # canceled before then shows the stage it reached
                    phase=PartitionPhase.EXPORT.value, attempts=0, not_before=None,
                )  # fmt: skip
            self._notify(conn)
        return True
