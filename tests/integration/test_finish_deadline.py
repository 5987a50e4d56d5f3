"""The coordinator's finish is fenced by the deadline: a task whose partitions all
committed but whose deadline passed before the finish ends TIMEOUT, never COMPLETED, and
its file records are not kept (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from exportd.model import FileRecord, FileStatus, TaskStatus
from exportd.model.lifecycle import finish_outcome
from exportd.store import PlannedPartition, Store
from exportd.store.base import utcnow
from exportd.store.tables import tasks
from tests.records import make_task

OWNER, LEASE = "test-worker", 30.0


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.close()


def _all_committed(store: Store, timeout_seconds: int) -> tuple[str, str]:
    """A running task whose two partitions committed; its coordinator's token to finish."""
    now = utcnow()
    task, _ = store.insert_task(
        make_task(
            task_id=uuid.uuid4().hex, create_time=now, update_time=now,
            timeout_seconds=timeout_seconds,
        )
    )  # fmt: skip
    tid = task.task_id
    claimed = store.claim_coordinator(OWNER, LEASE)
    assert claimed is not None
    token = claimed[1].token
    assert store.start_task(tid, token, now + timedelta(seconds=timeout_seconds))
    planned = [PlannedPartition({"lo": i, "hi": i + 1}) for i in range(2)]
    assert store.plan_task(tid, token, planned, 10, False, ["a"])
    while (claim := store.claim_partition(OWNER, LEASE)) is not None:
        _, part, lease = claim
        assert store.commit_partition(
            tid, part.index, lease.token, f"p/{part.index}", 5, 9, "0" * 64
        )
    claimed = store.claim_coordinator(OWNER, LEASE)
    assert claimed is not None and claimed[0].task_id == tid
    return tid, claimed[1].token


def _finish(store: Store, tid: str, token: str) -> bool:
    record = FileRecord(tid, "out.csv", f"out/{tid}.csv", 10, 18, "0" * 64, "text/csv")
    outcome = finish_outcome(2, 0, 0, False, 0.0)
    expires = utcnow() + timedelta(hours=1)
    return store.finish_task(tid, token, outcome, [record], expires, 10, 0, 18)


def test_a_late_finish_ends_timeout_not_completed(store: Store) -> None:
    tid, token = _all_committed(store, timeout_seconds=3600)
    with store.engine.begin() as conn:  # the deadline passes while the coordinator works
        conn.execute(
            sa.update(tasks)
            .where(tasks.c.task_id == tid)
            .values(deadline=utcnow() - timedelta(seconds=1))
        )
    assert _finish(store, tid, token) is False
    task = store.get_task("acme", tid)
    assert task.status is TaskStatus.TIMEOUT and task.error_code == "TIMEOUT"
    assert task.file_status is FileStatus.FAILED and task.files == []
    with store.engine.connect() as conn:  # its cleanup is due
        due = conn.execute(sa.select(tasks.c.coordinator_due).where(tasks.c.task_id == tid))
        assert due.scalar() is True


def test_a_finish_within_the_deadline_completes(store: Store) -> None:
    tid, token = _all_committed(store, timeout_seconds=3600)
    assert _finish(store, tid, token) is True
    task = store.get_task("acme", tid)
    assert task.status is TaskStatus.COMPLETED and [f.name for f in task.files] == ["out.csv"]
