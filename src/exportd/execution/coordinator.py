"""Coordinator work (the seed's "master task"), for every kind of task: under the
task's own lease (so any worker may do it and a crashed coordinator is simply taken
over), the next step is decided by `coordinator_work` and done by the task's kind (plan,
between passes, finish) or by the cleanup; a failed run is retried with backoff, and a
task is never left RUNNING on an error that persists."""

from __future__ import annotations

import logging
from collections.abc import Callable

from exportd import metrics
from exportd.errors import LeaseLost, StoreUnavailable
from exportd.execution.cleanup import cleanup, cleanup_later
from exportd.execution.heartbeat import Heartbeat
from exportd.execution.kinds import runner
from exportd.logs import unit_of_work
from exportd.model import (
    Lease,
    Task,
    TaskStatus,
)
from exportd.model.lifecycle import (
    RETRY_CAP_SECONDS,
    CoordinatorWork,
    coordinator_work,
)
from exportd.retrying import backoff
from exportd.runtime import Runtime
from exportd.storage import StorageFull, StorageUnavailable

log = logging.getLogger(__name__)


OUTAGE_RETRY_SECONDS = 5.0  # after a storage outage outlasted the budget


Work = Callable[[Heartbeat], None]


def run(rt: Runtime, task: Task, lease: Lease, work: Work | None = None) -> None:
    """One coordinator step (the next by `coordinator_work`, or `work`: a step a
    kind began under its lease, such as an import's publish streamed while its partitions
    run), with every log line of it naming the task, kept by a heartbeat, and every error
    handled as below."""
    with unit_of_work(task.task_id, None, "coordinator"):
        _run(rt, task, lease, work or (lambda hb: _dispatch(rt, task, lease, hb)))


def _run(rt: Runtime, task: Task, lease: Lease, work: Work) -> None:
    store = rt.store

    def beat(_rows: int, _bytes: int) -> TaskStatus | None:
        ok = store.renew_coordinator(task.task_id, lease.token, rt.settings.lease_seconds)
        return TaskStatus.RUNNING if ok else None

    try:
        with Heartbeat(beat, rt.settings.heartbeat_interval, None) as hb:
            work(hb)
    except LeaseLost:
        metrics.lease_lost("coordinator")
        log.warning("coordinator of %s lost its lease", task.task_id)
    except StoreUnavailable:  # not an error of this work: the lease lapses, another takes over
        log.warning("coordinator of %s: the store stayed unreachable", task.task_id)
    except Exception as exc:
        try:
            held = _after_error(rt, task, lease, exc)
        except Exception:
            log.exception("coordinator of %s failed", task.task_id)  # this run's error
            raise
        if held:
            log.exception("coordinator of %s failed", task.task_id)
        else:  # e.g. a host cut off mid-assembly, back after another took the task over
            metrics.fenced()
            metrics.lease_lost("coordinator")
            log.warning(
                "coordinator of %s lost its lease meanwhile (its run ended with %s); its "
                "error was not counted",
                task.task_id, type(exc).__name__,
            )  # fmt: skip


def _after_error(rt: Runtime, task: Task, lease: Lease, exc: Exception) -> bool:
    """Retry a failed coordinator run with backoff, up to `max_attempts` failures; then
    end the task, so that no task is left RUNNING forever on an error that persists. A
    storage that stayed unreachable for the whole outage budget is no failure of the
    task: the work is handed back for later. A cleanup is never given up. False: the
    lease was no longer this run's (the error's count was fenced out: another
    coordinator has the task, and the error, such as a part its cleanup had deleted,
    is no failure of the task)."""
    store = rt.store
    if not task.status.is_terminal and isinstance(exc, StorageUnavailable):
        store.release_coordinator(
            task.task_id, lease.token, due=True, retry_after=OUTAGE_RETRY_SECONDS
        )
        return True
    errors = store.count_coordinator_error(task.task_id, lease.token)
    if errors is None:
        return False
    if task.status.is_terminal:
        cleanup_later(rt, task, lease, errors)
        return True
    if errors < rt.settings.max_attempts:
        delay = backoff(errors, rt.settings.retry_base_seconds, RETRY_CAP_SECONDS)
        store.release_coordinator(task.task_id, lease.token, due=True, retry_after=delay)
        return True
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    msg = f"finishing work failed {errors} times; last: {type(exc).__name__}: {first_line}"
    if task.status in (TaskStatus.PENDING, TaskStatus.RUNNING):
        code = exc.error_code if isinstance(exc, StorageFull) else "COORDINATOR_FAILED"
        store.fail_task(task.task_id, lease.token, code, msg)
    else:  # CANCELING: the task ends CANCELED, its cleanup stays due
        store.finish_cancel(task.task_id, lease.token, cleaned=False)
    return True


def _dispatch(rt: Runtime, task: Task, lease: Lease, hb: Heartbeat) -> None:
    """The next step, by `coordinator_work`, done by the task's kind or by the cleanup."""
    work = coordinator_work(task.status, (p.status for p in task.partitions))
    kind = runner(task.kind)
    if work is not CoordinatorWork.WAIT:
        log.info("coordinator of %s: %s", task.task_id, work.name.lower())
    if work is CoordinatorWork.PLAN:
        kind.plan(rt, task, lease)
    elif work is CoordinatorWork.MERGE_HEADERS:
        kind.between_passes(rt, task, lease)
    elif work is CoordinatorWork.FINISH:
        kind.finish(rt, task, lease, hb)
    elif work is CoordinatorWork.WAIT:
        rt.store.release_coordinator(task.task_id, lease.token, due=False)
    else:  # CANCELING, or a terminal task whose parts still need cleaning up
        cleanup(rt, task, lease)
