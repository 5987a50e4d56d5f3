"""Stage 10 of an export: the total (the source's cheapest estimate) and the partitions
(key ranges, file splits) that cover every selected object exactly once."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

from exportd.errors import ExportdError, SourceError
from exportd.execution import kinds, snapshots
from exportd.model import (
    Lease,
    PartitionPhase,
    Stage,
    Task,
)
from exportd.model.lifecycle import (
    RETRY_CAP_SECONDS,
)
from exportd.model.plan import DocumentMode
from exportd.outages import source_outage
from exportd.retrying import backoff, ride_out
from exportd.runtime import Runtime, selection_for
from exportd.store import PlannedPartition

T = TypeVar("T")


def plan(rt: Runtime, task: Task, lease: Lease) -> None:
    store = rt.store
    if not kinds.start(rt, task, lease):
        return
    try:
        dataset = store.get_dataset(task.project_id, task.dataset_id)
        source = rt.source(dataset)
        sel = selection_for(task, dataset)
        # what the task delivers; a snapshot's holder opens now (docs/consistency.md)
        if not _through_outages(
            rt, task, lambda: snapshots.start(rt, task, dataset, source, lease.token)
        ):
            return  # the coordinator's lease is lost: its next holder takes over
        source = snapshots.planning_source(rt, task.task_id, dataset, source)  # a SQLite copy
        estimate = _through_outages(rt, task, lambda: source.estimate(sel))
        store.set_task_stage(
            task.task_id, lease.token, Stage.GETTING_TOTAL,
            total_count=estimate.count, total_is_estimate=estimate.is_estimate,
        )  # fmt: skip
        bounds = _through_outages(rt, task, lambda: source.plan(sel, task.parallelism))
    except (SourceError, ExportdError) as exc:
        # a source error uses a coordinator attempt; one that stayed unreachable for the
        # whole outage budget fails the task at once
        retry = isinstance(exc, SourceError) and not exc.transient
        if lease.attempt < rt.settings.max_attempts and retry:
            delay = backoff(lease.attempt, rt.settings.retry_base_seconds, RETRY_CAP_SECONDS)
            store.release_coordinator(task.task_id, lease.token, due=True, retry_after=delay)
        else:
            store.fail_task(task.task_id, lease.token, exc.error_code, exc.error_msg)
        return
    phase = (
        PartitionPhase.HEADERS
        if task.plan.documents is DocumentMode.DISCOVER
        else PartitionPhase.EXPORT
    )
    planned = [PlannedPartition(b, phase) for b in bounds]
    if not store.plan_task(
        task.task_id, lease.token, planned, estimate.count, estimate.is_estimate, task.columns
    ):  # canceled or timed out while planning: the cleanup is due
        store.release_coordinator(task.task_id, lease.token, due=True)


def _through_outages(rt: Runtime, task: Task, read: Callable[[], T]) -> T:
    """A planning read, tried again while the source cannot be reached (outage budget)."""
    return ride_out(
        read,
        transient=source_outage(rt.settings.outage_budget_seconds),
        budget=math.inf,  # counted from the first failure, by source_outage
        what=f"planning {task.task_id}: reading the source",
    )
