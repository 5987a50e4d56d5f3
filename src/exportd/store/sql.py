"""The store: tasks, partitions, leases and files. All SQL of exportd lives in this package.

Every status change is a guarded update (see transitions.py), every write by a worker is
fenced by its lease token, and a change commits together with the work it enables."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from exportd.domain import (
    ACTIVE_STATUSES,
    FileRecord,
    FileStatus,
    Lease,
    Partition,
    PartitionPhase,
    PartitionStatus,
    Stage,
    Task,
    TaskStatus,
)
from exportd.errors import BadRequest, Conflict, NotFound
from exportd.store.base import (
    as_utc,
    file_from_row,
    later,
    partition_from_row,
    task_from_row,
    utcnow,
)
from exportd.store.catalog import CatalogStore
from exportd.store.outbox import OutboxStore, notification_from_row
from exportd.store.tables import files, notifications, partitions, tasks
from exportd.transitions import Outcome

SORT_FIELDS = ("create_time", "update_time", "end_time", "file_name", "status", "task_id")


def sort_order(sort_field: str | None, sort_type: str | None) -> tuple[str, bool]:
    """(field, descending) of a listing: newest first without `sort_field`; with it,
    ascending unless `sort_type` is "desc". `sort_type` alone is a 400."""
    if sort_type is not None and sort_field is None:
        raise BadRequest("sort_type must be used together with sort_field", "INVALID_SORT")
    return (sort_field or "create_time", sort_type == "desc" if sort_field else True)


@dataclass(frozen=True)
class TaskQuery:
    """Filters, order and page of a task listing. A status tuple of None selects any
    status; an empty tuple selects none."""

    statuses: tuple[TaskStatus, ...] | None = None
    file_statuses: tuple[FileStatus, ...] | None = None
    file_name: str | None = None
    file_name_prefix: str | None = None
    task_id: str | None = None
    dataset_id: str | None = None
    is_download: bool | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    sort_field: str = "create_time"
    descending: bool = True
    offset: int = 0
    limit: int = 20


@dataclass(frozen=True)
class HeartbeatReply:
    task_status: TaskStatus


@dataclass(frozen=True)
class PlannedPartition:
    bounds: dict[str, Any]
    phase: PartitionPhase = PartitionPhase.EXPORT


# partitions that are not yet working under a lease and may be stopped outright
_IDLE = (PartitionStatus.PENDING.value, PartitionStatus.WAITING.value)


class Store(CatalogStore, OutboxStore):
    # ---- tasks: submit, read, list, cancel, delete -------------------------------------

    def insert_task(self, task: Task) -> tuple[Task, bool]:
        """Insert a new task, or return the existing one for the same idempotency key.
        Returns (task, created).

        Concurrent creates with one key race: a select before the insert cannot see a
        task another transaction has not yet committed. The insert therefore leaves a
        key conflict to the database (`ON CONFLICT DO NOTHING`, which on PostgreSQL waits
        for the other transaction) and reads the winner's task after it."""
        if not task.idempotency_key:
            with self.write() as conn:
                conn.execute(tasks.insert().values(**_task_values(task)))
                self._notify(conn)
            return task, True
        for _ in range(3):  # the winner's task may be deleted between conflict and read
            with self.write() as conn:
                existing = self._task_by_key(conn, task.project_id, task.idempotency_key)
                if existing is not None:
                    return existing, False
                stmt = self._insert_unless_key_taken().values(**_task_values(task))
                if conn.execute(stmt).first() is not None:  # the row it inserted
                    self._notify(conn)
                    return task, True
            with self.read() as conn:  # a fresh snapshot: the winner has committed
                existing = self._task_by_key(conn, task.project_id, task.idempotency_key)
            if existing is not None:
                return existing, False
        raise Conflict(
            "tasks with this Idempotency-Key are being created and deleted at once",
            "IDEMPOTENCY_KEY_BUSY",
        )

    def _insert_unless_key_taken(self) -> Any:
        """An insert into `tasks` that does nothing when (project_id, idempotency_key) is
        already taken, returning the id it inserted (SQLite and PostgreSQL spell it alike;
        `rowcount` is not reliable for it under psycopg)."""
        insert = postgresql.insert if self.is_postgres else sqlite.insert
        return (
            insert(tasks)
            .on_conflict_do_nothing(index_elements=[tasks.c.project_id, tasks.c.idempotency_key])
            .returning(tasks.c.task_id)
        )

    @staticmethod
    def _task_by_key(conn: sa.Connection, project_id: str, key: str) -> Task | None:
        row = conn.execute(
            sa.select(tasks).where(tasks.c.project_id == project_id, tasks.c.idempotency_key == key)
        ).first()
        return None if row is None else task_from_row(row._mapping)

    def get_task(self, project_id: str, task_id: str) -> Task:
        with self.read() as conn:
            row = conn.execute(
                sa.select(tasks).where(tasks.c.project_id == project_id, tasks.c.task_id == task_id)
            ).first()
            if row is None:
                raise NotFound(f"export task {task_id!r} not found", "TASK_NOT_FOUND")
            task = task_from_row(row._mapping)
            task.partitions = self._partitions(conn, task_id)
            task.files = self._files(conn, task_id)
            task.notifications = self.task_notifications(conn, task_id)
        return task

    def task_version(self, project_id: str, task_id: str) -> int | None:
        with self.read() as conn:
            return conn.execute(
                sa.select(tasks.c.version).where(
                    tasks.c.project_id == project_id, tasks.c.task_id == task_id
                )
            ).scalar()

    def list_tasks(self, project_id: str, q: TaskQuery) -> tuple[list[Task], int]:
        cond = [tasks.c.project_id == project_id]
        if q.statuses is not None:
            cond.append(tasks.c.status.in_([s.value for s in q.statuses]))
        if q.file_statuses is not None:
            cond.append(tasks.c.file_status.in_([s.value for s in q.file_statuses]))
        if q.file_name is not None:
            cond.append(tasks.c.file_name == q.file_name)
        if q.file_name_prefix is not None:
            escaped = q.file_name_prefix.replace("\\", "\\\\").replace("%", r"\%")
            cond.append(tasks.c.file_name.like(escaped.replace("_", r"\_") + "%", escape="\\"))
        if q.task_id is not None:
            cond.append(tasks.c.task_id == q.task_id)
        if q.dataset_id is not None:
            cond.append(tasks.c.dataset_id == q.dataset_id)
        if q.is_download is not None:
            cond.append(tasks.c.is_download == q.is_download)
        if q.created_from is not None:
            cond.append(tasks.c.create_time >= q.created_from)
        if q.created_to is not None:
            cond.append(tasks.c.create_time < q.created_to)
        col = tasks.c[q.sort_field]
        order = [col.desc() if q.descending else col.asc()]
        order.append(tasks.c.task_id.desc() if q.descending else tasks.c.task_id.asc())
        with self.read() as conn:
            count = conn.execute(
                sa.select(sa.func.count()).select_from(tasks).where(*cond)
            ).scalar()
            rows = conn.execute(
                sa.select(tasks).where(*cond).order_by(*order).offset(q.offset).limit(q.limit)
            ).all()
            result = [task_from_row(r._mapping) for r in rows]
            self._attach_children(conn, result)
        return result, int(count or 0)

    def _attach_children(self, conn: sa.Connection, found: list[Task]) -> None:
        """Load the partitions, files and notifications of a page of tasks: one query each."""
        by_id = {t.task_id: t for t in found}
        if not by_id:
            return
        n = notifications.c
        children: tuple[tuple[sa.Table, tuple[Any, ...], Callable[[Any], Any], str], ...] = (
            (partitions, (partitions.c.task_id, partitions.c.idx), partition_from_row, "partitions"),
            (files, (files.c.task_id, files.c.name), file_from_row, "files"),
            (notifications, (n.create_time, n.channel, n.target), notification_from_row, "notifications"),
        )  # fmt: skip
        for table, order, from_row, attr in children:
            rows = conn.execute(
                sa.select(table).where(table.c.task_id.in_(list(by_id))).order_by(*order)
            ).all()
            for r in rows:
                getattr(by_id[r.task_id], attr).append(from_row(r._mapping))

    def request_cancel(self, project_id: str, task_id: str) -> Task:
        """PENDING -> CANCELED at once; RUNNING -> CANCELING (workers stop, the
        coordinator cleans up and ends it CANCELED); CANCELING stays; terminal -> 409."""
        now = utcnow()
        with self.write() as conn:
            status = self._status_for_update(conn, project_id, task_id)
            if status is TaskStatus.PENDING:
                self._move_task(
                    conn, task_id, TaskStatus.CANCELED, now,
                    end_time=now, stage=Stage.NOT_STARTED.value,
                    file_status=FileStatus.FAILED.value,
                    error_code="CANCELED", error_msg="canceled by a user before it started",
                )  # fmt: skip
            elif status is TaskStatus.RUNNING:
                self._move_task(
                    conn, task_id, TaskStatus.CANCELING, now,
                    coordinator_due=True, coord_not_before=None,
                )  # fmt: skip
                self._cancel_pending_partitions(conn, task_id, now)
                self._notify(conn)
            elif status.is_terminal:
                raise Conflict(
                    f"export task {task_id!r} is already {status.value}", "TASK_ALREADY_FINISHED"
                )
        return self.get_task(project_id, task_id)

    def delete_task(self, project_id: str, task_id: str) -> Task:
        """Remove a finished task and its records; the caller deletes its stored files."""
        task = self.get_task(project_id, task_id)
        if not task.status.is_terminal:
            raise Conflict(
                f"export task {task_id!r} is {task.status.value}; cancel it before deleting",
                "TASK_NOT_FINISHED",
            )
        with self.write() as conn:
            conn.execute(notifications.delete().where(notifications.c.task_id == task_id))
            conn.execute(files.delete().where(files.c.task_id == task_id))
            conn.execute(partitions.delete().where(partitions.c.task_id == task_id))
            conn.execute(tasks.delete().where(tasks.c.task_id == task_id))
        return task

    def record_download(self, task_id: str) -> None:
        now = utcnow()
        with self.write() as conn:
            self._touch_task(
                conn, task_id, now, is_download=True, download_count=tasks.c.download_count + 1
            )

    # ---- file expiry ----------------------------------------------------------------------

    def expired_files(self, limit: int) -> list[tuple[str, list[str]]]:
        """(task id, storage keys) of generated files whose `file_expires_at` has passed."""
        with self.read() as conn:
            ids = conn.execute(
                sa.select(tasks.c.task_id)
                .where(
                    tasks.c.file_status == FileStatus.GENERATED.value,
                    tasks.c.file_expires_at < utcnow(),
                )
                .order_by(tasks.c.file_expires_at)
                .limit(limit)
            ).scalars()
            return [(t, [f.key for f in self._files(conn, t)]) for t in list(ids)]

    def mark_files_deleted(self, task_id: str) -> bool:
        """GENERATED -> DELETED once the files are gone; the task keeps its history."""
        now = utcnow()
        with self.write() as conn:
            n = conn.execute(
                sa.update(tasks)
                .where(
                    tasks.c.task_id == task_id,
                    tasks.c.file_status == FileStatus.GENERATED.value,
                )
                .values(
                    file_status=FileStatus.DELETED.value,
                    update_time=now,
                    version=tasks.c.version + 1,
                )
            ).rowcount
        return n == 1

    def _status_for_update(self, conn: sa.Connection, project_id: str, task_id: str) -> TaskStatus:
        stmt = sa.select(tasks.c.status).where(
            tasks.c.project_id == project_id, tasks.c.task_id == task_id
        )
        if self.is_postgres:
            stmt = stmt.with_for_update()
        status = conn.execute(stmt).scalar()
        if status is None:
            raise NotFound(f"export task {task_id!r} not found", "TASK_NOT_FOUND")
        return TaskStatus(status)

    def _partitions(self, conn: sa.Connection, task_id: str) -> list[Partition]:
        rows = conn.execute(
            sa.select(partitions).where(partitions.c.task_id == task_id).order_by(partitions.c.idx)
        ).all()
        return [partition_from_row(r._mapping) for r in rows]

    def _files(self, conn: sa.Connection, task_id: str) -> list[FileRecord]:
        rows = conn.execute(
            sa.select(files).where(files.c.task_id == task_id).order_by(files.c.kind, files.c.name)
        ).all()
        return [file_from_row(r._mapping) for r in rows]

    def _cancel_pending_partitions(self, conn: sa.Connection, task_id: str, now: datetime) -> None:
        conn.execute(
            sa.update(partitions)
            .where(partitions.c.task_id == task_id, partitions.c.status.in_(_IDLE))
            .values(status=PartitionStatus.CANCELED.value, update_time=now, end_time=now)
        )

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
        with self.write() as conn:
            n = conn.execute(
                sa.update(tasks)
                .where(tasks.c.task_id == task_id, tasks.c.coord_token == token)
                .values(coord_expires_at=later(lease_seconds))
            ).rowcount
        return n == 1

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
                    coord_owner=None,
                    coord_token=None,
                    coord_expires_at=None,
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
    ) -> bool:
        """Insert the partitions and open them to workers, in one transaction with the
        task's move to stage 60 (or 20 when the partitions start with a header pass). The
        coordinator's lease is released: nothing is due until the last partition stops
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
                    coord_owner=None,
                    coord_token=None,
                    coord_expires_at=None,
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
                coord_owner=None, coord_token=None, coord_expires_at=None,
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
        file records (visible as GENERATED only from this commit on). The cleanup of its
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
                stage=Stage.COMPLETED.value if generated else Stage.WRITING_MANIFEST.value,
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
                coord_owner=None, coord_token=None, coord_expires_at=None,
            )  # fmt: skip

    def task_states(self, task_ids: Collection[str]) -> dict[str, tuple[TaskStatus, FileStatus]]:
        """(status, file status) of those of these tasks that exist (for the sweeper)."""
        found: dict[str, tuple[TaskStatus, FileStatus]] = {}
        ids = sorted(task_ids)
        with self.read() as conn:
            for i in range(0, len(ids), 500):
                rows = conn.execute(
                    sa.select(tasks.c.task_id, tasks.c.status, tasks.c.file_status).where(
                        tasks.c.task_id.in_(ids[i : i + 500])
                    )
                ).all()
                found.update((r[0], (TaskStatus(r[1]), FileStatus(r[2]))) for r in rows)
        return found

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
            for task_id in conn.execute(_fair_tasks(due)).scalars():
                first = (
                    sa.select(partitions.c.idx)
                    .where(partitions.c.task_id == task_id, due)
                    .order_by(partitions.c.idx)
                    .limit(1)
                )
                idx = conn.execute(self._skip_locked(first)).scalar()
                if idx is not None:
                    found = (task_id, idx)
                    break
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
            )  # fmt: skip
            if not ok:
                return None
            prow = conn.execute(
                sa.select(partitions).where(
                    partitions.c.task_id == task_id, partitions.c.idx == idx
                )
            ).one()
            trow = conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).one()
            self._touch_task(conn, task_id, now, last_claim_time=now)
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
        """Renew the lease and record progress. None: the lease is lost (stop at once)."""
        now = utcnow()
        with self.write() as conn:
            n = conn.execute(
                sa.update(partitions)
                .where(*self._fence(task_id, index, token))
                .values(
                    lease_expires_at=later(lease_seconds, now),
                    finished_count=finished,
                    bytes_written=bytes_written,
                    update_time=now,
                )
            ).rowcount
            if n != 1:
                return None
            status = self._refresh_task_progress(conn, task_id, now)
        return HeartbeatReply(status)

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
    ) -> bool:
        """Fenced commit: the part becomes part of the result only if this lease still holds.
        When it is the last partition to stop, the coordinator's finishing work becomes due
        in the same transaction."""
        now = utcnow()
        with self.write() as conn:
            ok = self._move_partition(
                conn, task_id, index, PartitionStatus.DONE, now,
                *self._fence(task_id, index, token)[2:],
                stage=Stage.COMPLETED.value, part_key=part_key, part_sha256=sha256,
                finished_count=rows, bytes_written=bytes_written, end_time=now,
                lease_token=None, lease_expires_at=None, error_code=None, error_msg=None,
            )  # fmt: skip
            if ok:
                self._after_partition_stop(conn, task_id, now)
                return True
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
                *self._fence(task_id, index, token)[2:],
                partitions.c.phase == PartitionPhase.HEADERS.value,
                stage=Stage.WAIT_PARALLEL_HEADERS.value,
                header=header,
                lease_token=None, lease_expires_at=None, error_code=None, error_msg=None,
            )  # fmt: skip
            if ok:
                self._after_partition_stop(conn, task_id, now)
                return True
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
                    coord_owner=None,
                    coord_token=None,
                    coord_expires_at=None,
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
                    phase=PartitionPhase.EXPORT.value, stage=Stage.EXPORTING.value,
                    attempts=0, not_before=None,
                )  # fmt: skip
            self._notify(conn)
        return True

    # ---- the janitor ----------------------------------------------------------------------

    def reap(self, max_lost: int = 5, grace: float = 0.0) -> dict[str, int]:
        """Reclaim leases whose worker is gone; tasks past their deadline end TIMEOUT.
        Returns what was done, by kind.

        An expired lease is first only marked (`lapsed_at`); it is reclaimed when it is
        still expired `grace` seconds (a lease) after a janitor first saw it so: a
        worker that is alive but could not renew while the store was down renews it in
        that time. A reclaimed partition goes back to PENDING with its attempt given
        back (a lost worker is not a failed try) and one more `lost_count`; after
        `max_lost` losses it FAILs. Coordinator leases are marked the same way (taken
        over by `claim_coordinator`)."""
        now = utcnow()
        done = {"reclaimed": 0, "lease_failed": 0, "timed_out": 0}
        with self.write() as conn:
            self._mark_lapsed(conn, now)
            lapsed = sa.and_(
                partitions.c.status == PartitionStatus.RUNNING.value,
                partitions.c.lease_expires_at < now,
                partitions.c.lapsed_at > partitions.c.lease_expires_at,
                partitions.c.lapsed_at <= later(-grace, now),
            )
            expired = conn.execute(
                sa.select(
                    partitions.c.task_id, partitions.c.idx, partitions.c.attempts,
                    partitions.c.lost_count,
                ).where(lapsed)
            ).all()  # fmt: skip
            for task_id, idx, attempts, lost_before in expired:
                lost = lost_before + 1
                if lost <= max_lost:
                    if self._move_partition(
                        conn, task_id, idx, PartitionStatus.PENDING, now, lapsed,
                        stage=Stage.NOT_STARTED.value, lease_token=None, lease_expires_at=None,
                        attempts=max(attempts - 1, 0), lost_count=lost, error_code="LEASE_EXPIRED",
                        error_msg=f"its worker was lost (lease expired); lost {lost} of at "
                        f"most {max_lost} times",
                    ):  # fmt: skip
                        done["reclaimed"] += 1
                elif self._move_partition(
                    conn, task_id, idx, PartitionStatus.FAILED, now, lapsed,
                    lease_token=None, lease_expires_at=None, end_time=now, lost_count=lost,
                    error_code="LEASE_EXPIRED",
                    error_msg=f"gave up: its workers were lost {lost} times (EXPORTD_MAX_LOST)",
                ):  # fmt: skip
                    done["lease_failed"] += 1
                    self._after_partition_stop(conn, task_id, now)
            late = conn.execute(
                sa.select(tasks.c.task_id, tasks.c.timeout_seconds).where(
                    tasks.c.status.in_([s.value for s in ACTIVE_STATUSES]),
                    tasks.c.deadline.is_not(None),
                    tasks.c.deadline < now,
                )
            ).all()
            for task_id, timeout in late:
                if self._move_task(
                    conn, task_id, TaskStatus.TIMEOUT, now,
                    end_time=now, file_status=FileStatus.FAILED.value, error_code="TIMEOUT",
                    error_msg=f"export exceeded its time limit of {timeout} s (timeout_seconds)",
                    coordinator_due=True, coord_not_before=None,
                ):  # fmt: skip
                    self._cancel_pending_partitions(conn, task_id, now)
                    done["timed_out"] += 1
            if any(done.values()):
                self._notify(conn)
        return done

    def _mark_lapsed(self, conn: sa.Connection, now: datetime) -> None:
        """Note when a lease was first seen expired (a mark older than the lease's current
        expiry is stale: the lease was renewed or taken again since)."""
        p, t = partitions.c, tasks.c
        conn.execute(
            sa.update(partitions)
            .where(
                p.status == PartitionStatus.RUNNING.value,
                p.lease_expires_at < now,
                sa.or_(p.lapsed_at.is_(None), p.lapsed_at <= p.lease_expires_at),
            )
            .values(lapsed_at=now)
        )
        conn.execute(
            sa.update(tasks)
            .where(
                t.coordinator_due.is_(True),  # a held coordinator lease is due work
                t.coord_token.is_not(None),
                t.coord_expires_at < now,
                sa.or_(t.coord_lapsed_at.is_(None), t.coord_lapsed_at <= t.coord_expires_at),
            )
            .values(coord_lapsed_at=now)
        )

    def expired_coordinator_tasks(self) -> int:
        with self.read() as conn:
            n = conn.execute(
                sa.select(sa.func.count())
                .select_from(tasks)
                .where(tasks.c.coord_token.is_not(None), tasks.c.coord_expires_at < utcnow())
            ).scalar()
        return int(n or 0)


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


def _stage_of_pass() -> Any:
    """The stage a claimed partition shows: 20 in its header pass, 60 when exporting."""
    return sa.case(
        (partitions.c.phase == PartitionPhase.HEADERS.value, Stage.CREATING_HEADERS.value),
        else_=Stage.EXPORTING.value,
    )


def _task_values(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "project_id": task.project_id,
        "dataset_id": task.dataset_id,
        "status": task.status.value,
        "stage": task.stage.value,
        "file_status": task.file_status.value,
        "request": task.request,
        "format": task.format,
        "file_name": task.file_name,
        "columns": task.columns,
        "parallelism": task.parallelism,
        "allow_partial": task.allow_partial,
        "max_error_rate": task.max_error_rate,
        "timeout_seconds": task.timeout_seconds,
        "expires_in": task.expires_in,
        "idempotency_key": task.idempotency_key,
        "total_count": task.total_count,
        "total_is_estimate": task.total_is_estimate,
        "finished_count": 0,
        "failed_count": 0,
        "bytes_written": 0,
        "progress": 0.0,
        "error_code": None,
        "error_msg": None,
        "is_download": False,
        "download_count": 0,
        "create_time": task.create_time,
        "update_time": task.update_time,
        "start_time": None,
        "end_time": None,
        "deadline": None,
        "file_expires_at": None,
        "version": 0,
        "created_by": task.created_by,
        "created_by_name": task.created_by_name,
        "coordinator_due": True,
        "coord_not_before": None,
        "coord_owner": None,
        "coord_token": None,
        "coord_expires_at": None,
        "coord_attempts": 0,
        "coord_errors": 0,
        "last_claim_time": None,
    }


__all__ = ["SORT_FIELDS", "HeartbeatReply", "PlannedPartition", "Store", "TaskQuery", "as_utc"]
