"""Tasks: submit, read, list, cancel, delete, downloads and file expiry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from exportd.errors import BadRequest, Conflict, NotFound
from exportd.model import (
    FileRecord,
    FileStatus,
    Partition,
    PartitionStatus,
    Stage,
    Task,
    TaskKind,
    TaskStatus,
)
from exportd.store.base import (
    file_from_row,
    partition_from_row,
    task_from_row,
    utcnow,
)
from exportd.store.outbox import OutboxStore, notification_from_row
from exportd.store.rows import record_values
from exportd.store.tables import files, notifications, partitions, tasks

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
    kind: TaskKind | None = None  # one kind only (the imports listing)


# partitions that are not yet working under a lease and may be stopped outright
_IDLE = (PartitionStatus.PENDING.value, PartitionStatus.WAITING.value)


def _task_values(task: Task) -> dict[str, Any]:
    """The row of a new task: its record's fields, and no coordinator lease yet (due)."""
    return {
        **record_values(task, tasks.c),
        "coordinator_due": True,
        "coord_not_before": None,
        "coord_owner": None,
        "coord_token": None,
        "coord_expires_at": None,
        "coord_attempts": 0,
        "coord_errors": 0,
        "last_claim_time": None,
    }


def _stamp_statement() -> sa.Select[Any]:
    """`task_stamp`'s one read, built once (building it per call cost a quarter of a
    status request's CPU): bound by `project_id` and `task_id`."""
    task_id: sa.BindParameter[str] = sa.bindparam("task_id")
    return sa.select(
        tasks.c.version,
        tasks.c.status,
        sa.select(sa.func.max(partitions.c.update_time))
        .where(partitions.c.task_id == task_id)
        .scalar_subquery(),
        sa.select(sa.func.count())
        .select_from(partitions)
        .where(partitions.c.task_id == task_id)
        .scalar_subquery(),
        sa.select(sa.func.max(notifications.c.update_time))
        .where(notifications.c.task_id == task_id)
        .scalar_subquery(),
        sa.select(sa.func.count())
        .select_from(files)
        .where(files.c.task_id == task_id)
        .scalar_subquery(),
    ).where(tasks.c.project_id == sa.bindparam("project_id"), tasks.c.task_id == task_id)


_STAMP = _stamp_statement()
_STAMP_SQL: dict[str, tuple[str, tuple[str, ...]]] = {}  # by dialect: TaskStore._stamp_sql


class TaskStore(OutboxStore):
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
        return live_counts(task)

    def partitions_of(self, task_id: str) -> tuple[TaskStatus, list[Partition]]:
        """A task's status and its partitions (by index): what a coordinator waiting on
        them looks at, without the files and notifications of `get_task`."""
        with self.read() as conn:
            status = conn.execute(
                sa.select(tasks.c.status).where(tasks.c.task_id == task_id)
            ).scalar()
            if status is None:
                raise NotFound(f"export task {task_id!r} not found", "TASK_NOT_FOUND")
            return TaskStatus(status), self._partitions(conn, task_id)

    def task_version(self, project_id: str, task_id: str) -> int | None:
        with self.read() as conn:
            return conn.execute(
                sa.select(tasks.c.version).where(
                    tasks.c.project_id == project_id, tasks.c.task_id == task_id
                )
            ).scalar()

    def task_stamp(self, project_id: str, task_id: str) -> tuple[str, bool] | None:
        """What changes whenever anything a task's status body shows changes (the task
        row's version, its partitions' and notifications' last updates and counts, its
        files), and whether the task is terminal: one indexed read, no body built. None:
        no such task in this project."""
        sql, order = self._stamp_sql()
        values = {"project_id": project_id, "task_id": task_id}
        with self.read_one() as conn:
            params = tuple(values[k] for k in order) if order else values
            row = conn.exec_driver_sql(sql, params).first()
        if row is None:
            return None
        version, status, parts_at, parts, notes_at, nfiles = row
        stamp = f"{version}.{parts}.{parts_at}.{notes_at}.{nfiles}"
        return stamp, TaskStatus(status).is_terminal

    def _stamp_sql(self) -> tuple[str, tuple[str, ...]]:
        """`_STAMP` compiled once for this store's dialect, and the order of its positional
        parameters (empty for named ones): executed as the driver's SQL, a status request
        skips SQLAlchemy's statement cache and compiled-statement set-up (a third of its
        read's CPU)."""
        found = _STAMP_SQL.get(self.dialect)
        if found is None:
            compiled = _STAMP.compile(dialect=self.engine.dialect)
            found = _STAMP_SQL[self.dialect] = str(compiled), tuple(compiled.positiontup or ())
        return found

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
        if q.kind is not None:
            cond.append(tasks.c.kind == q.kind.value)
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
        return [live_counts(t) for t in result], int(count or 0)

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


def live_counts(task: Task) -> Task:
    """A running task's counts as its partitions last saved them (about once a second;
    the task row sums them only at heartbeats): the rows and bytes of its partitions,
    and the progress they make, never below the progress already shown."""
    if task.status is not TaskStatus.RUNNING or not task.partitions:
        return task
    task.finished_count = sum(p.finished_count for p in task.partitions)
    task.bytes_written = sum(p.bytes_written for p in task.partitions)
    if task.total_count:
        share = min(99.0, 100.0 * task.finished_count / task.total_count)
        task.progress = max(task.progress, share)
    return task
