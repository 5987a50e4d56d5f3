"""Seed 002: "once a task reaches a terminal status, it will not transition to another
state". Each terminal status is reached through the store's real moves, on SQLite and
PostgreSQL; then every move the store offers is attempted, and nothing changes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from exportd.errors import Conflict
from exportd.model import FileStatus, Task, TaskStatus
from exportd.model.lifecycle import TASK_MOVES, Outcome, finish_outcome
from exportd.store import PlannedPartition, Store
from exportd.store.base import utcnow
from exportd.store.tables import tasks
from tests.records import make_task

OWNER = "test-worker"
LEASE = 30.0


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.close()


def _new(store: Store) -> Task:
    now = utcnow()
    task, _ = store.insert_task(
        make_task(task_id=uuid.uuid4().hex, create_time=now, update_time=now)
    )
    return task


def _coordinator_token(store: Store, task_id: str) -> str:
    claimed = store.claim_coordinator(OWNER, LEASE)
    assert claimed is not None and claimed[0].task_id == task_id
    return claimed[1].token


def _run_partitions(store: Store, task_id: str, fail: set[int]) -> None:
    while (claim := store.claim_partition(OWNER, LEASE)) is not None:
        _, part, lease = claim
        if part.index in fail:
            assert store.fail_partition(task_id, part.index, lease.token, "BOOM", "boom", None)
        else:
            assert store.commit_partition(
                task_id, part.index, lease.token, f"parts/{task_id}/{part.index}", 5, 10, "0" * 64
            )


def _finished(store: Store, fail: set[int], allow_partial: bool) -> Task:
    task = _new(store)
    token = _coordinator_token(store, task.task_id)
    assert store.start_task(task.task_id, token, None)
    planned = [PlannedPartition({"lo": i, "hi": i + 1}) for i in range(4)]
    assert store.plan_task(task.task_id, token, planned, 20, False, ["a"])
    _run_partitions(store, task.task_id, fail)
    token = _coordinator_token(store, task.task_id)
    outcome = finish_outcome(4 - len(fail), len(fail), 0, allow_partial, 0.5)
    assert store.finish_task(task.task_id, token, outcome, [], None, 5 * (4 - len(fail)), 0, 0)
    return store.get_task(task.project_id, task.task_id)


def reach(store: Store, target: TaskStatus) -> Task:
    """A task in `target`, reached through the moves exportd itself makes."""
    if target is TaskStatus.CANCELED:
        task = _new(store)
        return store.request_cancel(task.project_id, task.task_id)
    if target is TaskStatus.COMPLETED:
        return _finished(store, set(), False)
    if target is TaskStatus.COMPLETED_WITH_ERRORS:
        return _finished(store, {2}, True)
    task = _new(store)
    token = _coordinator_token(store, task.task_id)
    if target is TaskStatus.FAILED:
        assert store.fail_task(task.task_id, token, "SOURCE_UNAVAILABLE", "gone")
    else:
        assert store.start_task(task.task_id, token, utcnow() - timedelta(seconds=1))
        store.release_coordinator(task.task_id, token, due=False)
        assert store.reap(3)["timed_out"] == 1
    return store.get_task(task.project_id, task.task_id)


def _row(store: Store, task_id: str) -> dict[str, object]:
    with store.read() as conn:
        return dict(conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).one()._mapping)


TERMINAL = [s for s in TaskStatus if s.is_terminal]


def test_no_move_leaves_a_terminal_status() -> None:
    assert not [(a, b) for a, b in TASK_MOVES if a.is_terminal]


@pytest.mark.parametrize("terminal", TERMINAL)
def test_terminal_status_never_changes(store: Store, terminal: TaskStatus) -> None:
    task = reach(store, terminal)
    assert task.status is terminal
    if terminal is TaskStatus.COMPLETED_WITH_ERRORS:
        assert task.file_status is FileStatus.GENERATED and task.error_code == "PARTIAL_FAILURE"
    before = _row(store, task.task_id)

    with pytest.raises(Conflict):
        store.request_cancel(task.project_id, task.task_id)
    now = utcnow()
    for target in TaskStatus:  # the guarded move itself, toward every status
        with store.write() as conn:
            assert not store._move_task(conn, task.task_id, target, now)
    store.reap(3)
    claimed = store.claim_coordinator(OWNER, LEASE)  # cleanup may still be due
    if claimed is not None:
        token = claimed[1].token
        done = Outcome(TaskStatus.COMPLETED, None, None, 100.0)
        assert not store.start_task(task.task_id, token, None)
        assert not store.fail_task(task.task_id, token, "X", "x")
        assert not store.finish_task(task.task_id, token, done, [], None, 1, 0, 0)
        assert not store.finish_cancel(task.task_id, token)
        store.release_coordinator(task.task_id, token, due=False)

    after = _row(store, task.task_id)
    for column in ("status", "error_code", "error_msg", "end_time", "file_status", "version"):
        assert after[column] == before[column], column
