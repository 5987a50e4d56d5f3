"""One attempt at a partition, for every kind of task: under its lease, kept by a
heartbeat, the kind's work for the partition runs and commits fenced by the lease token;
outages are ridden out, and every failure ends in a retry or a FAILED."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from exportd import metrics
from exportd.errors import (
    Canceled,
    ExportdError,
    LeaseLost,
    SourceError,
    StoreUnavailable,
)
from exportd.execution.heartbeat import Heartbeat
from exportd.execution.kinds import runner
from exportd.logs import unit_of_work
from exportd.model import Dataset, Lease, Partition, Task, TaskStatus
from exportd.model.lifecycle import retry_decision
from exportd.outages import source_outage
from exportd.retrying import ride_out
from exportd.runtime import Runtime, selection_for
from exportd.sources import Selection, Source
from exportd.storage import StorageUnavailable
from exportd.storage.keys import parts_prefix

log = logging.getLogger(__name__)


def part_folder(task: Task, part: Partition, lease: Lease, kind: str = "a") -> str:
    """Where one attempt writes: its segments and index (`a`), or the cells its header
    pass rendered (`h`); unique per attempt and token."""
    return f"{parts_prefix(task)}{part.index:05d}-{kind}{lease.attempt}-{lease.token[:12]}/"


@dataclass
class PartitionRun:
    """One attempt at a partition: what it reads, how, and under which lease."""

    rt: Runtime
    task: Task
    part: Partition
    lease: Lease
    dataset: Dataset
    source: Source
    sel: Selection

    def beat(self, rows: int, written: int) -> TaskStatus | None:
        reply = self.rt.store.heartbeat(
            self.task.task_id, self.part.index, self.lease.token,
            self.rt.settings.lease_seconds, rows, written,
        )  # fmt: skip
        return None if reply is None else reply.task_status

    def save_progress(self, rows: int, written: int) -> TaskStatus | None:
        """The partition's counts, between beats (about once a second)."""
        return self.rt.store.record_progress(
            self.task.task_id, self.part.index, self.lease.token, rows, written
        )

    def batches(self) -> Iterator[Sequence[Sequence[Any]]]:
        return self.source.read(self.sel, self.part.bounds, self.rt.settings.batch_size)

    @property
    def where(self) -> str:
        return f"partition {self.task.task_id}/{self.part.index}"


def run_partition(rt: Runtime, task: Task, part: Partition, lease: Lease) -> None:
    """`attempt`, with every log line of it naming the task and the partition."""
    with unit_of_work(task.task_id, part.index):
        attempt(rt, task, part, lease)


def attempt(rt: Runtime, task: Task, part: Partition, lease: Lease) -> None:
    """Run one pass of a partition (its header pass, or its export into a part) and
    commit it fenced by the lease token; every failure ends in a retry or a FAILED.

    Outages are not failures of the work and use up no attempt: an unreachable source
    is read again from the start of the pass for up to `outage_budget_seconds` (then the
    partition fails with SOURCE_UNAVAILABLE), and the store's calls ride out their own
    budget (a store still unreachable after it leaves the lease to lapse: the partition
    is reclaimed as lost, not as failed)."""
    store = rt.store
    try:
        dataset = store.get_dataset(task.project_id, task.dataset_id)
        source = rt.source(dataset, task.snapshot_id)  # a task's SQLite copy, if any
        sel = selection_for(task, dataset)
        run = PartitionRun(rt, task, part, lease, dataset, source, sel)
    except (ExportdError, SourceError) as exc:  # the dataset or its connection is gone
        store.fail_partition(
            task.task_id, part.index, lease.token, exc.error_code, exc.error_msg, None
        )
        return
    work = runner(task.kind).partition_work(part)
    try:
        with Heartbeat(
            run.beat, rt.settings.heartbeat_interval, TaskStatus.RUNNING, run.save_progress
        ) as hb:
            ride_out(
                lambda: work(run, hb),
                transient=source_outage(rt.settings.outage_budget_seconds),
                budget=math.inf,  # counted from the first failure instead, by source_outage
                what=f"{run.where}: reading the source",
            )
    except LeaseLost:
        metrics.lease_lost("partition")
        log.warning("%s: lease lost; attempt abandoned", run.where)
    except Canceled:
        store.cancel_partition(task.task_id, part.index, lease.token)
    except StoreUnavailable:  # nothing can be recorded now: the lease lapses, not an attempt
        log.warning("%s: the store stayed unreachable; the lease is left to lapse", run.where)
    except Exception as exc:  # every failure ends in a decision: retry or fail for good
        _failed_attempt(run, exc)


STORAGE_RETRY_SECONDS = 5.0  # a partition handed back after a storage outage


def _failed_attempt(run: PartitionRun, exc: Exception) -> None:
    """A failed try: again after a backoff while attempts are left, else FAILED. A
    source that stayed unreachable for the whole outage budget fails at once: its try
    already lasted the budget, and attempts are for failures of the work itself. A
    storage that stayed unreachable for its budget hands the partition back for later,
    without using an attempt: the work can only go on once the storage is back."""
    s = run.rt.settings
    if isinstance(exc, StorageUnavailable):  # not the partition's fault: not an attempt
        log.warning("%s handed back: %s", run.where, exc.error_msg)
        run.rt.store.hand_back_partition(
            run.task.task_id, run.part.index, run.lease.token, exc.error_code,
            exc.error_msg[:2000], STORAGE_RETRY_SECONDS,
        )  # fmt: skip
        return
    code = getattr(exc, "error_code", "PARTITION_ERROR")
    msg = exc.error_msg if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
    decision = retry_decision(run.lease.attempt, s.max_attempts, s.retry_base_seconds)
    if isinstance(exc, SourceError) and exc.transient:
        msg = f"the source could not be reached for {s.outage_budget_seconds:g} s: {msg}"
        decision = retry_decision(1, 1, 0.0)
    log.warning("%s attempt %d failed: %s", run.where, run.lease.attempt, msg)
    run.rt.store.fail_partition(
        run.task.task_id, run.part.index, run.lease.token, code, msg[:2000],
        decision.delay_seconds if decision.retry else None,
    )  # fmt: skip


def discard(run: PartitionRun, folder: str) -> None:
    """Delete an uncommitted attempt's folder, best effort: whatever stays is under the
    task's parts prefix, which the task's cleanup and the sweeper delete in the end; the
    attempt's own error is the one that counts."""
    try:
        run.rt.storage.delete_prefix(folder)
    except Exception as exc:
        log.warning("%s: attempt folder left for the cleanup (%s)", run.where, type(exc).__name__)
