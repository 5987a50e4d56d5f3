"""The coordinator's lease on a task (the seed's master task) and its guarded moves: start,
plan, stage, fail, finish, cancel, and the partitions it must wait for."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from exportd.model import (
    ACTIVE_STATUSES,
    FileRecord,
    FileStatus,
    Lease,
    PartitionPhase,
    PartitionStatus,
    Stage,
    Task,
    TaskStatus,
)
from exportd.model.lifecycle import Outcome
from exportd.store.base import (
    NO_COORDINATOR,
    later,
    task_from_row,
    utcnow,
)
from exportd.store.rows import as_utc
from exportd.store.tables import files, partitions, tasks
from exportd.store.tasks import _IDLE, TaskStore


@dataclass(frozen=True)
class PlannedPartition:
    bounds: dict[str, Any]
    phase: PartitionPhase = PartitionPhase.EXPORT


def _late(now: datetime, *columns: Any) -> sa.Select[Any]:
    """The active tasks whose deadline has passed (by the status index)."""
    return sa.select(*(columns or (tasks.c.task_id,))).where(
        tasks.c.status.in_(sorted(s.value for s in ACTIVE_STATUSES)),
        tasks.c.deadline.is_not(None),
        tasks.c.deadline < now,
    )


class CoordinationStore(TaskStore):
    # ---- coordinator ("master task") leases ---------------------------------------------

    def claim_coordinator(self, owner: str, lease_seconds: float) -> tuple[Task, Lease] | None:
        """Claim a task whose coordinator work is due and whose coordinator lease is free:
        released, or expired and seen so by a janitor at least a lease ago (a coordinator
        that only could not renew during a store outage gets to renew first)."""
        now = utcnow()
        free = sa.and_(
            tasks.c.coordinator_due.is_(True),
            sa.or_(tasks.c.coord_not_before.is_(None), tasks.c.coord_not_before <= now),
            sa.or_(
                tasks.c.coord_expires_at.is_(None),
                sa.and_(
                    tasks.c.coord_expires_at < now,
                    tasks.c.coord_lapsed_at > tasks.c.coord_expires_at,
                    tasks.c.coord_lapsed_at <= later(-lease_seconds, now),
                ),
            ),
        )
        with self.write() as conn:
            stmt = sa.select(tasks.c.task_id).where(free).order_by(tasks.c.create_time).limit(1)
            task_id = conn.execute(self._skip_locked(stmt)).scalar()
            if task_id is None:
                return None
            token = uuid.uuid4().hex
            expires = later(lease_seconds, now)
            conn.execute(
                sa.update(tasks)
                .where(tasks.c.task_id == task_id, free)
                .values(
                    coord_owner=owner,
                    coord_token=token,
                    coord_expires_at=expires,
                    coord_lapsed_at=None,
                    coord_attempts=tasks.c.coord_attempts + 1,
                )
            )
            row = conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).one()
            task = task_from_row(row._mapping)
            task.partitions = self._partitions(conn, task_id)
        return task, Lease(owner, token, expires, row.coord_attempts)

    def _coordinator_fence(self, token: str) -> Any:
        return tasks.c.coord_token == token

    def renew_coordinator(self, task_id: str, token: str, lease_seconds: float) -> bool:
        """Renew the coordinator's lease; a task past its deadline ends TIMEOUT in the same
        transaction (the coordinator's next check sees it)."""
        now = utcnow()
        with self.write() as conn:
            n = conn.execute(
                sa.update(tasks)
                .where(tasks.c.task_id == task_id, tasks.c.coord_token == token)
                .values(coord_expires_at=later(lease_seconds, now))
            ).rowcount
            if self._time_out_late(conn, now, task_id):
                self._notify(conn)
        return n == 1

    # ---- deadlines ------------------------------------------------------------------------

    def time_out_late(self) -> int:
        """Every active task past its deadline ends TIMEOUT; how many did. Cheap enough to
        run every half second: one indexed read, and a write transaction only when a task
        is late (so SQLite's write lock is not taken for nothing)."""
        now = utcnow()
        with self.read() as conn:
            if not conn.execute(sa.select(_late(now).exists())).scalar():
                return 0
        with self.write() as conn:
            n = self._time_out_late(conn, now)
            if n:
                self._notify(conn)
        return n

    def next_deadline(self) -> datetime | None:
        """The earliest deadline of an active task (None: no active task has one)."""
        with self.read() as conn:
            found = conn.execute(
                sa.select(sa.func.min(tasks.c.deadline)).where(
                    tasks.c.status.in_(sorted(s.value for s in ACTIVE_STATUSES)),
                    tasks.c.deadline.is_not(None),
                )
            ).scalar()
        return as_utc(found)

    def _time_out_late(self, conn: sa.Connection, now: datetime, task_id: str | None = None) -> int:
        """The guarded move to TIMEOUT of the late active tasks (of `task_id` only, when
        given): its pending partitions canceled, its cleanup due, its notifications in
        the outbox (by `_move_task`), all in the caller's transaction."""
        late = _late(now, tasks.c.task_id, tasks.c.timeout_seconds)
        if task_id is not None:
            late = late.where(tasks.c.task_id == task_id)
        moved = 0
        for late_id, timeout in conn.execute(late).all():
            if self._move_task(
                conn, late_id, TaskStatus.TIMEOUT, now,
                end_time=now, file_status=FileStatus.FAILED.value, error_code="TIMEOUT",
                error_msg=f"export exceeded its time limit of {timeout} s (timeout_seconds)",
                coordinator_due=True, coord_not_before=None,
            ):  # fmt: skip
                self._cancel_pending_partitions(conn, late_id, now)
                moved += 1
        return moved

    def count_coordinator_error(self, task_id: str, token: str) -> int | None:
        """One more failed coordinator run of the task (fenced); None if the lease is lost."""
        with self.write() as conn:
            n = conn.execute(
                sa.update(tasks)
                .where(tasks.c.task_id == task_id, tasks.c.coord_token == token)
                .values(coord_errors=tasks.c.coord_errors + 1)
            ).rowcount
            if n != 1:
                return None
            return int(
                conn.execute(
                    sa.select(tasks.c.coord_errors).where(tasks.c.task_id == task_id)
                ).scalar_one()
            )

    def release_coordinator(
        self, task_id: str, token: str, *, due: bool, retry_after: float | None = None
    ) -> None:
        with self.write() as conn:
            conn.execute(
                sa.update(tasks)
                .where(tasks.c.task_id == task_id, tasks.c.coord_token == token)
                .values(
                    **NO_COORDINATOR,
                    coordinator_due=due,
                    coord_not_before=later(retry_after) if retry_after else None,
                )
            )

    def set_task_stage(self, task_id: str, token: str, stage: Stage, **values: Any) -> bool:
        """Coordinator progress within one status (fenced by its lease token)."""
        now = utcnow()
        with self.write() as conn:
            n = conn.execute(
                sa.update(tasks)
                .where(tasks.c.task_id == task_id, tasks.c.coord_token == token)
                .values(stage=stage.value, update_time=now, version=tasks.c.version + 1, **values)
            ).rowcount
        return n == 1

    def start_task(self, task_id: str, token: str, deadline: datetime | None) -> bool:
        """PENDING -> RUNNING at stage 10 (getting total), fenced by the coordinator lease."""
        now = utcnow()
        with self.write() as conn:
            if self._move_task(
                conn, task_id, TaskStatus.RUNNING, now, tasks.c.coord_token == token,
                stage=Stage.GETTING_TOTAL.value, start_time=now, deadline=deadline,
            ):  # fmt: skip
                return True
            # run again after a COMMIT whose answer was lost: it is RUNNING under our lease
            status = conn.execute(
                sa.select(tasks.c.status).where(
                    tasks.c.task_id == task_id, tasks.c.coord_token == token
                )
            ).scalar()
            return status == TaskStatus.RUNNING.value

    def plan_task(
        self,
        task_id: str,
        token: str,
        planned: list[PlannedPartition],
        total: int | None,
        total_is_estimate: bool,
        columns: list[str],
        keep_lease: bool = False,
    ) -> bool:
        """Insert the partitions and open them to workers, in one transaction with the
        task's move to stage 60 (or 20 when the partitions start with a header pass). The
        coordinator's lease is released (unless `keep_lease`: its holder works on while
        the partitions run, renewing it): nothing is due until the last partition stops
        (or, with a header pass, until the last header is in)."""
        now = utcnow()
        header_pass = any(p.phase is PartitionPhase.HEADERS for p in planned)
        stage = Stage.CREATING_HEADERS if header_pass else Stage.EXPORTING
        with self.write() as conn:
            n = conn.execute(
                sa.update(tasks)
                .where(
                    tasks.c.task_id == task_id,
                    tasks.c.coord_token == token,
                    tasks.c.status == TaskStatus.RUNNING.value,
                )
                .values(
                    stage=stage.value,
                    total_count=total,
                    total_is_estimate=total_is_estimate,
                    columns=columns,
                    parallelism=len(planned),
                    coordinator_due=False,
                    **({} if keep_lease else NO_COORDINATOR),
                    update_time=now,
                    version=tasks.c.version + 1,
                )
            ).rowcount
            if n != 1:
                return False
            conn.execute(
                partitions.insert(),
                [
                    {
                        "task_id": task_id,
                        "idx": i,
                        "status": PartitionStatus.PENDING.value,
                        "stage": Stage.NOT_STARTED.value,
                        "bounds": p.bounds,
                        "phase": p.phase.value,
                        "finished_count": 0,
                        "bytes_written": 0,
                        "attempts": 0,
                        "update_time": now,
                    }
                    for i, p in enumerate(planned)
                ],
            )
            self._notify(conn)
        return True

    def fail_task(self, task_id: str, token: str, code: str, msg: str) -> bool:
        """The coordinator could not go on: FAILED, remaining partitions canceled; the
        cleanup of parts stays due."""
        now = utcnow()
        with self.write() as conn:
            ok = self._move_task(
                conn, task_id, TaskStatus.FAILED, now, tasks.c.coord_token == token,
                error_code=code, error_msg=msg, end_time=now,
                file_status=FileStatus.FAILED.value, coordinator_due=True,
                **NO_COORDINATOR,
            )  # fmt: skip
            if ok:
                self._cancel_pending_partitions(conn, task_id, now)
        return ok

    def finish_task(
        self,
        task_id: str,
        token: str,
        outcome: Outcome,
        records: list[FileRecord],
        file_expires_at: datetime | None,
        finished_count: int,
        failed_count: int,
        bytes_written: int,
    ) -> bool:
        """The terminal move of a task whose partitions have all stopped, together with its
        file records (visible as GENERATED only from this commit on). Fenced by the
        deadline too: a task past it ends TIMEOUT in this transaction instead (False). The cleanup of its
        parts is recorded as due in the same commit; the coordinator keeps its lease for
        it and releases the lease once the storage confirms (`release_coordinator`)."""
        now = utcnow()
        generated = outcome.status is not TaskStatus.FAILED
        with self.write() as conn:
            ok = self._move_task(
                conn,
                task_id,
                outcome.status,
                now,
                tasks.c.coord_token == token,
                # past its deadline, a task can only end TIMEOUT (below), whatever its output
                sa.or_(tasks.c.deadline.is_(None), tasks.c.deadline >= now),
                # a failed end keeps the stage last reached (see docs/api-mapping.md)
                stage=Stage.COMPLETED.value if generated else tasks.c.stage,
                file_status=(FileStatus.GENERATED if generated else FileStatus.FAILED).value,
                error_code=outcome.error_code,
                error_msg=outcome.error_msg,
                end_time=now,
                finished_count=finished_count,
                failed_count=failed_count,
                bytes_written=bytes_written,
                total_count=finished_count + failed_count if generated else tasks.c.total_count,
                total_is_estimate=False if generated else tasks.c.total_is_estimate,
                progress=100.0 if generated else tasks.c.progress,
                file_expires_at=file_expires_at,
                # cleanup pending (parts, and a failed task's outputs), in this very commit:
                # the coordinator keeps its lease to do it; if it dies, the lease expires
                # and the cleanup is claimed again
                coordinator_due=True,
            )
            if ok and records:
                conn.execute(
                    files.insert(),
                    [
                        {
                            "task_id": r.task_id,
                            "name": r.name,
                            "kind": r.kind,
                            "key": r.key,
                            "rows": r.rows,
                            "bytes": r.bytes,
                            "sha256": r.sha256,
                            "media_type": r.media_type,
                            "create_time": now,
                        }
                        for r in records
                    ],
                )
            if not ok and self._time_out_late(conn, now, task_id):  # late: TIMEOUT instead
                self._notify(conn)
        return ok

    def finish_cancel(self, task_id: str, token: str, *, cleaned: bool = True) -> bool:
        """CANCELING -> CANCELED; unless `cleaned`, its cleanup stays due (and is retried)."""
        now = utcnow()
        with self.write() as conn:
            return self._move_task(
                conn, task_id, TaskStatus.CANCELED, now, tasks.c.coord_token == token,
                end_time=now, file_status=FileStatus.FAILED.value,
                error_code="CANCELED", error_msg="canceled by a user",
                coordinator_due=not cleaned, coord_not_before=None,
                **NO_COORDINATOR,
            )  # fmt: skip

    def task_states(self, task_ids: Collection[str]) -> dict[str, tuple[TaskStatus, FileStatus]]:
        """(status, file status) of those of these tasks that exist (for the sweeper)."""
        rows = self._task_columns(task_ids, tasks.c.file_status)
        return {t: (TaskStatus(status), FileStatus(fs)) for t, (status, fs) in rows.items()}

    def live_partition_leases(self, task_id: str) -> int:
        """How many partitions of the task are still held under an unexpired lease."""
        now = utcnow()
        with self.read() as conn:
            n = conn.execute(
                sa.select(sa.func.count())
                .select_from(partitions)
                .where(
                    partitions.c.task_id == task_id,
                    partitions.c.status == PartitionStatus.RUNNING.value,
                    partitions.c.lease_expires_at >= now,
                )
            ).scalar()
        return int(n or 0)

    def stop_abandoned_partitions(self, task_id: str) -> None:
        """Partitions of an ended task whose lease expired: CANCELED (their holder is gone)."""
        now = utcnow()
        with self.write() as conn:
            conn.execute(
                sa.update(partitions)
                .where(
                    partitions.c.task_id == task_id,
                    partitions.c.status.in_([PartitionStatus.RUNNING.value, *_IDLE]),
                    sa.or_(
                        partitions.c.lease_expires_at.is_(None),
                        partitions.c.lease_expires_at < now,
                    ),
                )
                .values(
                    status=PartitionStatus.CANCELED.value,
                    lease_token=None,
                    lease_owner=None,
                    lease_expires_at=None,
                    update_time=now,
                    end_time=now,
                )
            )
