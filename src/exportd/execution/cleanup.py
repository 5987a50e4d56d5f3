"""Cleaning up after a task, whatever its kind: every part, the uploads left open,
its consistent copy of a SQLite source, and, unless its files were GENERATED, its output
folder's files. Durable work: it is recorded
as due in the terminal move's commit and retried until the storage confirms."""

from __future__ import annotations

import logging

from exportd.execution.kinds import runner
from exportd.model import (
    FileStatus,
    Lease,
    Task,
    TaskStatus,
)
from exportd.retrying import backoff
from exportd.runtime import Runtime
from exportd.storage import is_temporary
from exportd.storage.keys import output_prefix, parts_prefix

log = logging.getLogger(__name__)

CLEANUP_RETRY_SECONDS = 0.5


CLEANUP_RETRY_CAP = 300.0  # a cleanup is tried again for ever, at least every 5 minutes


def cleanup_later(rt: Runtime, task: Task, lease: Lease, errors: int) -> None:
    """A terminal task's cleanup failed: due again after a backoff that grows to a cap."""
    delay = backoff(errors, max(rt.settings.retry_base_seconds, 0.1), CLEANUP_RETRY_CAP)
    log.warning("cleanup of %s failed %d times; again in %.0f s", task.task_id, errors, delay)
    rt.store.release_coordinator(task.task_id, lease.token, due=True, retry_after=delay)


def clean_up_now(rt: Runtime, task: Task, lease: Lease, *, generated: bool) -> None:
    """Right after the terminal move (whose commit recorded the cleanup as due, the
    lease kept): clean up and release; a failure leaves it due, tried again later."""
    try:
        _clean_kind(rt, task)
        _clean_storage(rt, task, generated=generated)
    except Exception as exc:
        log.warning("cleanup of %s failed: %s", task.task_id, type(exc).__name__)
        errors = rt.store.count_coordinator_error(task.task_id, lease.token)
        if errors is not None:
            cleanup_later(rt, task, lease, errors)
        return
    rt.store.release_coordinator(task.task_id, lease.token, due=False)


def _clean_storage(rt: Runtime, task: Task, *, generated: bool) -> None:
    """Delete every part of the task and abort the uploads left open in its output
    folder; unless its files were GENERATED, delete the folder's files too (a failed
    task never leaves a complete-looking data file). Only the folder's own files: a
    folder below it is another task's. Any error propagates: the cleanup stays due."""
    storage = rt.storage
    storage.delete_prefix(parts_prefix(task))
    folder = output_prefix(task)
    storage.abort_uploads(folder)
    doomed = [
        key
        for key in storage.list(folder)
        if "/" not in key[len(folder) :] and (not generated or is_temporary(key))
    ]
    for key in doomed:
        storage.delete(key)
    kind_cleanup = getattr(runner(task.kind), "clean_storage", None)
    if kind_cleanup is not None:  # what a kind writes beyond the folder's own files
        kind_cleanup(rt, task, generated=generated)


def cleanup(rt: Runtime, task: Task, lease: Lease) -> None:
    """After a cancel, timeout or failure, or an end whose cleanup is still due: wait
    until no worker holds a live partition lease, then clean up (`_clean_storage`); a
    CANCELING task then ends CANCELED. The due flag is cleared only once the storage
    has confirmed every deletion; an error leaves it due (see `_after_error`)."""
    store = rt.store
    if store.live_partition_leases(task.task_id):
        store.release_coordinator(
            task.task_id, lease.token, due=True, retry_after=CLEANUP_RETRY_SECONDS
        )
        return
    store.stop_abandoned_partitions(task.task_id)
    _clean_kind(rt, task)
    _clean_storage(rt, task, generated=task.file_status is FileStatus.GENERATED)
    if task.status is TaskStatus.CANCELING:
        store.finish_cancel(task.task_id, lease.token)
    else:
        store.release_coordinator(task.task_id, lease.token, due=False)


def _clean_kind(rt: Runtime, task: Task) -> None:
    """What a kind keeps outside the storage (an import's staging tables), if anything,
    and a task's consistent copy of a SQLite source (docs/consistency.md; on this host:
    another host's copies are its sweeper's)."""
    from exportd.execution.kinds import runner
    from exportd.execution.snapshots import drop_copies

    drop_copies(rt, task.task_id)
    hook = getattr(runner(task.kind), "clean_up", None)
    if hook is not None:
        hook(rt, task)
