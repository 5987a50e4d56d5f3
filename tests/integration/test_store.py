"""The store on SQLite and PostgreSQL: migrations match the tables, illegal moves are
refused where the data lives, and leases fence stale workers."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from exportd.errors import Conflict, NotFound, StoreUnavailable
from exportd.model import FileStatus, PartitionStatus, Stage, Task, TaskStatus
from exportd.store import PlannedPartition, Store
from exportd.store.tables import metadata, partitions, tasks
from tests.netfault import FaultyProxy
from tests.records import make_plan


@pytest.fixture
def store(store_url: str) -> Store:
    s = Store(store_url)
    s.create_project("p")
    yield s  # type: ignore[misc]
    s.close()


def test_migrations_produce_exactly_the_declared_tables(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    with store.engine.connect() as conn:
        names = set(conn.dialect.get_table_names(conn))
    assert set(metadata.tables) <= names


def test_migrating_twice_is_a_no_op(store_url: str) -> None:
    """A second start finds the schema at head and leaves it exactly as it was."""
    Store(store_url).close()
    store = Store(store_url)  # second start: already at head
    try:
        with store.engine.connect() as conn:
            ctx = MigrationContext.configure(conn)
            assert compare_metadata(ctx, metadata) == []
            assert ctx.get_current_heads() == (_head(store_url),)
    finally:
        store.close()


def _head(store_url: str) -> str:
    from alembic.script import ScriptDirectory

    from exportd.store.engine import alembic_config

    head = ScriptDirectory.from_config(alembic_config(store_url)).get_current_head()
    assert head is not None
    return head


def new_task(project: str = "p") -> Task:
    now = datetime.now(UTC)
    return Task(
        task_id=uuid.uuid4().hex, project_id=project, dataset_id="ds", status=TaskStatus.PENDING,
        stage=Stage.NOT_STARTED, file_status=FileStatus.PREPARING,
        request={}, plan=make_plan(("id",)), format="csv", file_name="x.csv", columns=["id"],
        parallelism=2, allow_partial=False, max_error_rate=1.0, timeout_seconds=None,
        expires_in=3600, create_time=now, update_time=now,
    )  # fmt: skip


def started(store: Store, parts: int = 2) -> str:
    task, _ = store.insert_task(new_task())
    claim = store.claim_coordinator("c", 30)
    assert claim is not None
    _, lease = claim
    assert store.start_task(task.task_id, lease.token, None)
    planned = [PlannedPartition({"lo": i, "hi": i + 1}) for i in range(parts)]
    assert store.plan_task(task.task_id, lease.token, planned, 10, True, ["id"])
    return task.task_id


def test_terminal_status_never_changes(store: Store) -> None:
    task, _ = store.insert_task(new_task())
    canceled = store.request_cancel("p", task.task_id)
    assert canceled.status is TaskStatus.CANCELED
    with pytest.raises(Conflict):
        store.request_cancel("p", task.task_id)
    with store.write() as conn:  # even the store's own guarded move refuses it
        for target in TaskStatus:
            assert not store._move_task(conn, task.task_id, target, datetime.now(UTC))
    with store.read() as conn:
        assert conn.execute(tasks.select()).one().status == "CANCELED"


def test_claims_are_exclusive_and_fenced(store: Store) -> None:
    task_id = started(store)
    a = store.claim_partition("worker-a", 30)
    b = store.claim_partition("worker-b", 30)
    assert a is not None and b is not None
    assert {a[1].index, b[1].index} == {0, 1}
    assert store.claim_partition("worker-c", 30) is None  # nothing left to claim
    _, part, lease = a
    assert store.heartbeat(task_id, part.index, "not-the-token", 30, 5, 50) is None
    assert not store.commit_partition(task_id, part.index, "not-the-token", "k", 1, 1, "h")
    reply = store.heartbeat(task_id, part.index, lease.token, 30, 5, 50)
    assert reply is not None and reply.task_status is TaskStatus.RUNNING
    assert store.get_task("p", task_id).finished_count == 5


def test_expired_lease_is_reclaimed_and_the_old_holder_fenced(store: Store) -> None:
    task_id = started(store, parts=1)
    claim = store.claim_partition("dead-worker", 0.05)
    assert claim is not None
    _, part, old = claim
    time.sleep(0.1)
    assert store.reap(max_lost=3)["reclaimed"] == 1
    again = store.claim_partition("live-worker", 30)
    assert again is not None
    _, part2, new = again
    # the lost worker's try is given back: this is attempt 1 again, after one loss
    assert part2.index == part.index and new.attempt == 1 and part2.lost_count == 1
    # the dead worker wakes up: every write it tries is refused
    assert store.heartbeat(task_id, part.index, old.token, 30, 1, 1) is None
    assert not store.commit_partition(task_id, part.index, old.token, "old", 1, 1, "h")
    assert store.commit_partition(task_id, part.index, new.token, "new", 7, 70, "h")
    t = store.get_task("p", task_id)
    assert [p.part_key for p in t.partitions] == ["new"]
    assert t.partitions[0].status is PartitionStatus.DONE and t.partitions[0].attempts == 1
    assert t.partitions[0].lost_count == 1


def test_last_partition_makes_the_coordinator_due_in_the_same_commit(store: Store) -> None:
    task_id = started(store, parts=2)
    claims = [store.claim_partition(f"w{i}", 30) for i in range(2)]
    assert store.claim_coordinator("c", 30) is None  # nothing due while partitions run
    for c in claims:
        assert c is not None
        store.commit_partition(task_id, c[1].index, c[2].token, f"k{c[1].index}", 5, 5, "h")
    claim = store.claim_coordinator("c", 30)
    assert claim is not None and claim[0].task_id == task_id
    assert [p.status for p in claim[0].partitions] == [PartitionStatus.DONE] * 2


def test_out_of_attempts_fails_the_partition(store: Store) -> None:
    task_id = started(store, parts=1)
    claim = store.claim_partition("w", 30)
    assert claim is not None
    assert store.fail_partition(task_id, 0, claim[2].token, "E", "boom", None)
    t = store.get_task("p", task_id)
    assert t.partitions[0].status is PartitionStatus.FAILED
    assert t.partitions[0].error_code == "E"


def test_tasks_from_before_plans_get_their_plan(store_url: str) -> None:
    """Migration 0009 moves a stored request's private keys into the typed plan."""
    from alembic import command

    from exportd.store.engine import alembic_config, create_store_engine

    engine = create_store_engine(store_url)
    command.upgrade(alembic_config(store_url), "0005")
    old = sa.Table("tasks", sa.MetaData(), autoload_with=engine)
    row = {c.name: _filler(c) for c in old.columns if not c.nullable and c.server_default is None}
    row.update(
        task_id="t1", project_id="p", dataset_id="ds", format="csv", status="PENDING",
        stage=0, file_status="PREPARING", columns=["id", "name"], request={
            "dataset_id": "ds", "format": "csv", "filter": {"id": {"gt": 3}},
            "_source_columns": ["id", "name"], "_output_prefix": "exports/p/dest/t1/",
            "_notify": {"webhook_url": "https://example.test/h", "emails": ["a@b.test"]},
            "_fingerprint": "f" * 64,
        },
    )  # fmt: skip
    old_parts = sa.Table("partitions", sa.MetaData(), autoload_with=engine)
    part = {c.name: _filler(c) for c in old_parts.columns if not c.nullable}
    part.update(task_id="t1", idx=0, status="DONE", stage=90, phase="EXPORT", bounds={})
    with engine.begin() as conn:
        conn.execute(old.insert().values(**row))
        conn.execute(old_parts.insert().values(**part))
    engine.dispose()
    store = Store(store_url)  # migrates to head
    try:
        task = store.get_task("p", "t1")
    finally:
        store.close()
    assert task.request == {"dataset_id": "ds", "format": "csv", "filter": {"id": {"gt": 3}}}
    plan = task.plan
    assert plan.source_columns == ("id", "name") and plan.filter == ({"id": {"gt": 3}},)
    assert plan.output.prefix == "exports/p/dest/t1/" and plan.output.format == "csv"
    assert plan.notify.webhook_url == "https://example.test/h"
    assert plan.notify.emails == ("a@b.test",)
    assert plan.fingerprint == "f" * 64 and plan.documents is None
    # SQLite rebuilds tables to change them: the task's children must survive it
    assert [(p.index, p.status) for p in task.partitions] == [(0, PartitionStatus.DONE)]


@pytest.mark.parametrize(
    ("table", "column", "bogus"),
    [
        (tasks, "status", "ALMOST_DONE"),
        (tasks, "stage", 55),
        (tasks, "file_status", "LOST"),
        (partitions, "status", "SLEEPING"),
    ],
)
def test_a_status_that_does_not_exist_cannot_be_stored(
    store: Store, table: sa.Table, column: str, bogus: object
) -> None:
    task_id = started(store)
    key = table.c.task_id == task_id
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(sa.update(table).where(key).values({column: bogus}))
    with store.engine.connect() as conn:
        assert bogus not in conn.execute(sa.select(table.c[column]).where(key)).scalars().all()


def _filler(col: sa.Column[Any]) -> Any:
    """A value of a NOT NULL column's type, for a row the test does not care about."""
    py = col.type.python_type if not isinstance(col.type, sa.JSON) else dict
    return {str: "x", int: 0, float: 0.0, bool: False, dict: {}}.get(py, datetime.now(UTC))


def test_an_expired_lease_gets_a_lease_of_grace_to_be_renewed(store: Store) -> None:
    """A lease that lapsed while its worker could not reach the store is not reclaimed
    the moment a janitor sees it: the worker renews it first and keeps its partition."""
    task_id = started(store, parts=1)
    claim = store.claim_partition("alive-but-cut-off", 0.05)
    assert claim is not None
    lease = claim[2]
    time.sleep(0.1)
    assert store.reap(grace=30)["reclaimed"] == 0  # only noted as lapsed
    assert store.heartbeat(task_id, 0, lease.token, 30, 3, 30) is not None
    assert store.reap(grace=0)["reclaimed"] == 0  # renewed: the mark is stale
    assert store.commit_partition(task_id, 0, lease.token, "k", 3, 30, "h")
    part = store.get_task("p", task_id).partitions[0]
    assert (part.status, part.attempts, part.lost_count) == (PartitionStatus.DONE, 1, 0)


def test_a_lapsed_lease_is_reclaimed_after_its_grace(store: Store) -> None:
    task_id = started(store, parts=1)
    assert store.claim_partition("gone", 0.05) is not None
    time.sleep(0.1)
    assert store.reap(grace=0.2)["reclaimed"] == 0  # first seen lapsed now
    time.sleep(0.3)
    assert store.reap(grace=0.2)["reclaimed"] == 1
    part = store.get_task("p", task_id).partitions[0]
    assert (part.status, part.attempts, part.lost_count) == (PartitionStatus.PENDING, 0, 1)
    assert part.error_code == "LEASE_EXPIRED"


def test_lost_workers_have_their_own_budget(store: Store) -> None:
    """With max_attempts 1, losses do not fail the partition; max_lost of them do."""
    task_id = started(store, parts=1)
    for lost in (1, 2):
        claim = store.claim_partition(f"gone-{lost}", 0.05)
        assert claim is not None and claim[2].attempt == 1  # every try is the first
        time.sleep(0.1)
        done = store.reap(max_lost=1)
        assert (done["reclaimed"], done["lease_failed"]) == ((1, 0) if lost == 1 else (0, 1))
    part = store.get_task("p", task_id).partitions[0]
    assert (part.status, part.lost_count, part.error_code) == (
        PartitionStatus.FAILED, 2, "LEASE_EXPIRED"
    )  # fmt: skip


def test_fenced_commits_run_twice_know_they_happened(store: Store) -> None:
    """A commit whose COMMIT answer was lost runs again (the whole unit of work): it
    reports success for its own committed part, and still fences any other."""
    task_id = started(store, parts=2)
    a, b = store.claim_partition("w", 30), store.claim_partition("w", 30)
    assert a is not None and b is not None
    assert store.commit_partition(task_id, a[1].index, a[2].token, "ka", 5, 5, "h")
    assert store.commit_partition(task_id, a[1].index, a[2].token, "ka", 5, 5, "h")
    assert not store.commit_partition(task_id, a[1].index, a[2].token, "other", 5, 5, "h")
    assert not store.commit_partition(task_id, b[1].index, a[2].token, "ka", 5, 5, "h")
    task, _ = store.insert_task(new_task())
    claim = store.claim_coordinator("c", 30)
    assert claim is not None and claim[0].task_id == task.task_id
    assert store.start_task(task.task_id, claim[1].token, None)
    assert store.start_task(task.task_id, claim[1].token, None)  # run again: it did start
    assert not store.start_task(task.task_id, "not-the-token", None)


def test_an_unreachable_store_is_ridden_out_on_the_callers_budget(pg_database: str) -> None:
    """With the store cut off, a thread without a budget (an API request) fails at once
    with StoreUnavailable (503), never a driver error; a worker thread's call tries
    again until the store is back and then gets its real answer."""
    proxy = FaultyProxy("127.0.0.1", 5432)
    store = Store(pg_database.replace(":5432/", f":{proxy.port}/"))
    try:
        store.engine.dispose()  # no pooled connection: every call connects through the cut
        proxy.cut()
        with pytest.raises(StoreUnavailable) as caught:
            store.get_task("p", "t")
        assert caught.value.error_code == "STORE_UNAVAILABLE" and caught.value.status_code == 503
        assert proxy.refused == 1  # tried once

        threading.Timer(1.5, proxy.restore).start()
        with store.riding_out(60), pytest.raises(NotFound):  # the store's own answer
            store.get_task("p", "t")
        assert proxy.refused >= 2  # tried again while the store was unreachable
    finally:
        store.close()
        proxy.close()
