"""The store's transaction helpers, row mapping and guarded status moves."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from exportd.domain import (
    FileRecord,
    Partition,
    PartitionStatus,
    Task,
    TaskStatus,
)
from exportd.store.engine import create_store_engine, migrate
from exportd.store.events import enqueue_notifications
from exportd.store.rows import record_from_row
from exportd.store.tables import partitions, tasks
from exportd.store.wakeup import Waker
from exportd.transitions import partition_sources, task_sources

NOTIFY_CHANNEL = "exportd_work"
PARTITION_COLUMNS = {"index": "idx"}  # record field -> column, where they differ


def utcnow() -> datetime:
    return datetime.now(UTC)


def later(seconds: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) + timedelta(seconds=seconds)


class StoreBase:
    """Owns the engine; every method opens its own short transaction."""

    def __init__(self, url: str, *, run_migrations: bool = True) -> None:
        self.engine = create_store_engine(url)
        self.dialect = self.engine.dialect.name
        self.is_postgres = self.dialect == "postgresql"
        if run_migrations:
            migrate(self.engine)
        self.waker = Waker(self.engine if self.is_postgres else None, NOTIFY_CHANNEL)

    def close(self) -> None:
        self.waker.close()
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A write transaction: `BEGIN IMMEDIATE` on SQLite, plain on PostgreSQL."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _notify(self, conn: sa.Connection) -> None:
        """Wake workers once the transaction commits (NOTIFY is transactional)."""
        if self.is_postgres:
            conn.execute(sa.text("SELECT pg_notify(:c, '')"), {"c": NOTIFY_CHANNEL})
        self.waker.notify_local()

    def _skip_locked(self, stmt: sa.Select[Any], of: Any = None) -> sa.Select[Any]:
        if self.is_postgres:
            return stmt.with_for_update(skip_locked=True, of=of)
        return stmt  # SQLite: BEGIN IMMEDIATE already serializes writers

    # guarded moves: an illegal (from, to) pair can never be written
    def _move_task(
        self,
        conn: sa.Connection,
        task_id: str,
        target: TaskStatus,
        now: datetime,
        *where: Any,
        **values: Any,
    ) -> bool:
        stmt = (
            sa.update(tasks)
            .where(tasks.c.task_id == task_id)
            .where(tasks.c.status.in_([s.value for s in task_sources(target)]))
            .where(*where)
            .values(status=target.value, update_time=now, version=tasks.c.version + 1, **values)
        )
        moved = conn.execute(stmt).rowcount == 1
        if moved and target.is_terminal:  # the outbox commits with the status, or neither
            enqueue_notifications(conn, task_id, target, now)
        return moved

    def _move_partition(
        self,
        conn: sa.Connection,
        task_id: str,
        index: int,
        target: PartitionStatus,
        now: datetime,
        *where: Any,
        **values: Any,
    ) -> bool:
        stmt = (
            sa.update(partitions)
            .where(partitions.c.task_id == task_id, partitions.c.idx == index)
            .where(partitions.c.status.in_([s.value for s in partition_sources(target)]))
            .where(*where)
            .values(status=target.value, update_time=now, **values)
        )
        return conn.execute(stmt).rowcount == 1

    def _touch_task(self, conn: sa.Connection, task_id: str, now: datetime, **values: Any) -> None:
        conn.execute(
            sa.update(tasks)
            .where(tasks.c.task_id == task_id)
            .values(update_time=now, version=tasks.c.version + 1, **values)
        )


def task_from_row(row: Any) -> Task:
    return record_from_row(Task, row)


def partition_from_row(row: Any) -> Partition:
    return record_from_row(Partition, row, PARTITION_COLUMNS)


def file_from_row(row: Any) -> FileRecord:
    return record_from_row(FileRecord, row)
