"""The store's transaction helpers, row mapping and guarded status moves.

Every public method of a store class is one unit of work (`_unit_of_work`): when the
store cannot be reached, the whole method (all of its transaction, never half of one) is
tried again for as long as the calling thread allows (`riding_out`: workers, heartbeats,
the coordinator and the janitor ride out `outage_budget_seconds`; API requests do not
wait), and then fails with `StoreUnavailable`. A method may therefore run again after a
first run whose COMMIT was lost: each one is written so that running it twice is safe
(fenced by lease tokens, and the fenced commits detect that they already happened)."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa

from exportd.errors import StoreUnavailable
from exportd.model import FileRecord, Partition, PartitionStatus, Task, TaskStatus
from exportd.model.lifecycle import partition_sources, task_sources
from exportd.outages import unreachable
from exportd.retrying import ride_out
from exportd.store.engine import create_store_engine, migrate
from exportd.store.enqueue import enqueue_notifications
from exportd.store.rows import record_from_row
from exportd.store.tables import partitions, tasks
from exportd.store.wakeup import Waker

NOTIFY_CHANNEL = "exportd_work"
PARTITION_COLUMNS = {"index": "idx"}
# the coordinator's lease released (the values of a task row's lease columns without one)
NO_COORDINATOR = {
    "coord_owner": None,
    "coord_token": None,
    "coord_expires_at": None,
}  # record field -> column, where they differ

P = ParamSpec("P")
R = TypeVar("R")


def utcnow() -> datetime:
    return datetime.now(UTC)


def later(seconds: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) + timedelta(seconds=seconds)


def _unit_of_work(method: Callable[P, R]) -> Callable[P, R]:
    """The method, tried again as a whole while the store is unreachable, on the calling
    thread's budget; a call made from inside another unit is part of that one."""

    @functools.wraps(method)
    def unit(*args: P.args, **kwargs: P.kwargs) -> R:
        store: StoreBase = args[0]  # type: ignore[assignment]
        local = store._local
        if getattr(local, "inside", False):
            return method(*args, **kwargs)

        def once() -> R:
            local.inside = True
            try:
                return method(*args, **kwargs)
            finally:
                local.inside = False

        budget = getattr(local, "budget", 0.0)
        try:
            if budget <= 0:  # an API request: answer 503 now rather than wait
                return once()
            return ride_out(once, transient=unreachable, budget=budget, what=method.__name__)
        except Exception as exc:
            if not unreachable(exc):
                raise
            raise StoreUnavailable(
                f"the store cannot be reached ({type(exc).__name__}); try again later"
            ) from exc

    return unit


class StoreBase:
    """Owns the engine; every method opens its own short transaction."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Make every public method of a store class a unit of work (those that take the
        caller's `conn` run inside the caller's transaction and are left alone)."""
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if name.startswith("_") or not inspect.isfunction(value):
                continue
            if "conn" in inspect.signature(value).parameters:
                continue
            setattr(cls, name, _unit_of_work(value))

    def __init__(self, url: str, *, run_migrations: bool = True) -> None:
        self._local = threading.local()
        self.engine = create_store_engine(url)
        self.dialect = self.engine.dialect.name
        self.is_postgres = self.dialect == "postgresql"
        if run_migrations:
            migrate(self.engine)
        database = self.engine.url.database
        sqlite_file = (
            database if self.dialect == "sqlite" and database and database != ":memory:" else None
        )
        self.waker = Waker(self.engine if self.is_postgres else None, NOTIFY_CHANNEL, sqlite_file)

    def close(self) -> None:
        self.waker.close()
        self.engine.dispose()

    @contextmanager
    def riding_out(self, budget: float) -> Iterator[None]:
        """While inside, this thread's store calls ride out an unreachable store for up to
        `budget` seconds each before they raise `StoreUnavailable`."""
        previous = getattr(self._local, "budget", 0.0)
        self._local.budget = budget
        try:
            yield
        finally:
            self._local.budget = previous

    def ping(self) -> None:
        """One trivial round trip (readiness): raises `StoreUnavailable` when it fails."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            if not unreachable(exc) and not isinstance(exc, sa.exc.DBAPIError):
                raise
            raise StoreUnavailable(f"the store cannot be reached ({type(exc).__name__})") from exc

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

    def _task_columns(self, task_ids: Collection[str], column: Any) -> dict[str, tuple[str, Any]]:
        """(status, `column`) of those of these tasks that exist, read 500 ids a query
        (the sweeper's lookups)."""
        found: dict[str, tuple[str, Any]] = {}
        ids = sorted(task_ids)
        with self.read() as conn:
            for i in range(0, len(ids), 500):
                rows = conn.execute(
                    sa.select(tasks.c.task_id, tasks.c.status, column).where(
                        tasks.c.task_id.in_(ids[i : i + 500])
                    )
                ).all()
                found.update((r[0], (r[1], r[2])) for r in rows)
        return found

    @contextmanager
    def read_one(self) -> Iterator[sa.Connection]:
        """For a read of one statement (atomic by itself): on SQLite without the BEGIN and
        COMMIT of a transaction around it."""
        with (
            self.engine.connect() as conn,
            conn.execution_options(sqlite_single_read=True).begin(),
        ):
            yield conn

    def _notify(self, conn: sa.Connection) -> None:
        """Wake workers once the transaction commits (NOTIFY is transactional)."""
        if self.is_postgres:
            conn.execute(sa.text("SELECT pg_notify(:c, '')"), {"c": NOTIFY_CHANNEL})
        elif self.dialect == "sqlite":  # other processes on this file read it (Waker)
            version = conn.exec_driver_sql("PRAGMA user_version").scalar() or 0
            conn.exec_driver_sql(f"PRAGMA user_version = {(int(version) + 1) % 2**31}")
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
