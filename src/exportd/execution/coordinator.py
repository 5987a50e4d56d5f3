"""Coordinator work (the seed's "master task"): plan a task into partitions (stage 10),
merge the partitions' headers when documents go to a flat format (30), assemble the
committed parts into the output (70), write the manifest (80) and end the task (90); or
clean up after a cancel, a timeout or a failure. Runs under the task's own lease, so any
worker may do it and a crashed coordinator is simply taken over."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import orjson

from exportd.documents.flatten import MAX_COLUMNS, merge_headers
from exportd.errors import ExportdError, LeaseLost, NotFound, SourceError, StoreUnavailable
from exportd.execution.heartbeat import Heartbeat
from exportd.formats.splitting import Layout, file_names, pack, read_index
from exportd.model import (
    Dataset,
    FileRecord,
    FileStatus,
    Lease,
    Partition,
    PartitionPhase,
    PartitionStatus,
    Stage,
    Task,
    TaskStatus,
)
from exportd.model.lifecycle import (
    RETRY_CAP_SECONDS,
    CoordinatorWork,
    Outcome,
    coordinator_work,
    finish_outcome,
)
from exportd.model.plan import DocumentMode
from exportd.outages import source_outage
from exportd.retrying import backoff, ride_out
from exportd.runtime import Runtime, columns_for, selection_for
from exportd.storage import StorageFull, StorageUnavailable, is_temporary
from exportd.storage.keys import output_prefix, parts_prefix
from exportd.store import PlannedPartition
from exportd.store.base import utcnow

log = logging.getLogger(__name__)

CLEANUP_RETRY_SECONDS = 0.5
CLEANUP_RETRY_CAP = 300.0  # a cleanup is tried again for ever, at least every 5 minutes
OUTAGE_RETRY_SECONDS = 5.0  # after a storage outage outlasted the budget
T = TypeVar("T")


def run(rt: Runtime, task: Task, lease: Lease) -> None:
    store = rt.store

    def beat(_rows: int, _bytes: int) -> TaskStatus | None:
        ok = store.renew_coordinator(task.task_id, lease.token, rt.settings.lease_seconds)
        return TaskStatus.RUNNING if ok else None

    try:
        with Heartbeat(beat, rt.settings.heartbeat_interval, None) as hb:
            _dispatch(rt, task, lease, hb)
    except LeaseLost:
        log.warning("coordinator of %s lost its lease", task.task_id)
    except StoreUnavailable:  # not an error of this work: the lease lapses, another takes over
        log.warning("coordinator of %s: the store stayed unreachable", task.task_id)
    except Exception as exc:
        log.exception("coordinator of %s failed", task.task_id)
        _after_error(rt, task, lease, exc)


def _after_error(rt: Runtime, task: Task, lease: Lease, exc: Exception) -> None:
    """Retry a failed coordinator run with backoff, up to `max_attempts` failures; then
    end the task, so that no task is left RUNNING forever on an error that persists. A
    storage that stayed unreachable for the whole outage budget is no failure of the
    task: the work is handed back for later. A cleanup is never given up."""
    store = rt.store
    if not task.status.is_terminal and isinstance(exc, StorageUnavailable):
        store.release_coordinator(
            task.task_id, lease.token, due=True, retry_after=OUTAGE_RETRY_SECONDS
        )
        return
    errors = store.count_coordinator_error(task.task_id, lease.token)
    if errors is None:
        return
    if task.status.is_terminal:
        _cleanup_later(rt, task, lease, errors)
        return
    if errors < rt.settings.max_attempts:
        delay = backoff(errors, rt.settings.retry_base_seconds, RETRY_CAP_SECONDS)
        store.release_coordinator(task.task_id, lease.token, due=True, retry_after=delay)
        return
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    msg = f"finishing work failed {errors} times; last: {type(exc).__name__}: {first_line}"
    if task.status in (TaskStatus.PENDING, TaskStatus.RUNNING):
        code = exc.error_code if isinstance(exc, StorageFull) else "COORDINATOR_FAILED"
        store.fail_task(task.task_id, lease.token, code, msg)
    else:  # CANCELING: the task ends CANCELED, its cleanup stays due
        store.finish_cancel(task.task_id, lease.token, cleaned=False)


def _cleanup_later(rt: Runtime, task: Task, lease: Lease, errors: int) -> None:
    """A terminal task's cleanup failed: due again after a backoff that grows to a cap."""
    delay = backoff(errors, max(rt.settings.retry_base_seconds, 0.1), CLEANUP_RETRY_CAP)
    log.warning("cleanup of %s failed %d times; again in %.0f s", task.task_id, errors, delay)
    rt.store.release_coordinator(task.task_id, lease.token, due=True, retry_after=delay)


def _dispatch(rt: Runtime, task: Task, lease: Lease, hb: Heartbeat) -> None:
    work = coordinator_work(task.status, (p.status for p in task.partitions))
    if work is CoordinatorWork.PLAN:
        _plan(rt, task, lease)
    elif work is CoordinatorWork.MERGE_HEADERS:
        _merge_headers(rt, task, lease)
    elif work is CoordinatorWork.FINISH:
        _finish(rt, task, lease, hb)
    elif work is CoordinatorWork.WAIT:
        rt.store.release_coordinator(task.task_id, lease.token, due=False)
    else:  # CANCELING, or a terminal task whose parts still need cleaning up
        _cleanup(rt, task, lease)


def _plan(rt: Runtime, task: Task, lease: Lease) -> None:
    store = rt.store
    if task.status is TaskStatus.PENDING:
        deadline = (
            utcnow() + timedelta(seconds=task.timeout_seconds) if task.timeout_seconds else None
        )
        if not store.start_task(task.task_id, lease.token, deadline):
            store.release_coordinator(task.task_id, lease.token, due=False)
            return
    try:
        dataset = store.get_dataset(task.project_id, task.dataset_id)
        source = rt.source(dataset)
        sel = selection_for(task, dataset)
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


def _merge_headers(rt: Runtime, task: Task, lease: Lease) -> None:
    """Stage 30: every header pass is in. The waiting partitions' key lists are merged as
    trees, in partition order (the documented tree order, whatever the split), and the
    partitions open for export with it. When
    header passes failed beyond what the request allows, the task fails now instead."""
    store = rt.store
    waiting = sorted(
        (p for p in task.partitions if p.status is PartitionStatus.WAITING), key=lambda p: p.index
    )
    failed = sum(1 for p in task.partitions if p.status is PartitionStatus.FAILED)
    canceled = sum(1 for p in task.partitions if p.status is PartitionStatus.CANCELED)
    outcome = finish_outcome(
        len(waiting), failed, canceled, task.allow_partial, task.max_error_rate
    )
    if outcome.status is TaskStatus.FAILED:
        store.fail_task(
            task.task_id, lease.token, outcome.error_code or "", outcome.error_msg or ""
        )
        return
    columns = merge_headers((p.header or {}).get("keys", []) for p in waiting)
    if len(columns) > MAX_COLUMNS:
        msg = f"the documents have {len(columns)} distinct flattened keys (at most {MAX_COLUMNS})"
        store.fail_task(task.task_id, lease.token, "TOO_MANY_COLUMNS", msg)
        return
    if not store.open_export(task.task_id, lease.token, columns):
        store.release_coordinator(task.task_id, lease.token, due=True)


def _finish(rt: Runtime, task: Task, lease: Lease, hb: Heartbeat) -> None:
    store, storage = rt.store, rt.storage
    by = {s: [p for p in task.partitions if p.status is s] for s in PartitionStatus}
    outcome = finish_outcome(
        len(by[PartitionStatus.DONE]),
        len(by[PartitionStatus.FAILED]),
        len(by[PartitionStatus.CANCELED]),
        task.allow_partial,
        task.max_error_rate,
    )
    outcome = _named_cause(outcome, by[PartitionStatus.FAILED])
    finished = sum(p.finished_count for p in by[PartitionStatus.DONE])
    failed_rows = _failed_rows(rt, task, by[PartitionStatus.FAILED])
    if outcome.status is TaskStatus.FAILED:
        if store.finish_task(
            task.task_id, lease.token, outcome, [], None, finished, failed_rows, 0
        ):
            _clean_up_now(rt, task, lease, generated=False)
        return

    store.set_task_stage(task.task_id, lease.token, Stage.COMPLETING_UPLOAD)
    files = _assemble(rt, task, by[PartitionStatus.DONE], hb)
    store.set_task_stage(task.task_id, lease.token, Stage.WRITING_MANIFEST)
    expires = utcnow() + timedelta(seconds=task.expires_in)
    manifest = _manifest(task, outcome, files, by, failed_rows, expires.isoformat())
    manifest_key = output_prefix(task) + "manifest.json"
    with storage.open_write(manifest_key) as out:
        out.write(manifest)
    mrec = FileRecord(
        task.task_id, "manifest.json", manifest_key, 0, len(manifest),
        hashlib.sha256(manifest).hexdigest(), "application/json", kind="manifest",
    )  # fmt: skip
    hb.check()
    records = [f.record for f in files]
    ok = store.finish_task(
        task.task_id, lease.token, outcome, [*records, mrec], expires, finished, failed_rows,
        sum(r.bytes for r in records),
    )  # fmt: skip
    if ok:
        if rt.settings.debug_pause_after_finish:
            time.sleep(rt.settings.debug_pause_after_finish)
        _clean_up_now(rt, task, lease, generated=True)
    elif not _finished_by_another(rt, task):  # canceled or timed out meanwhile
        for r in [*records, mrec]:  # this output must never be seen
            storage.delete(r.key)
        store.release_coordinator(task.task_id, lease.token, due=True)


OUTAGE_CODES = ("SOURCE_UNAVAILABLE", "STORAGE_UNAVAILABLE", "STORE_UNAVAILABLE", "STORAGE_FULL")


def _named_cause(outcome: Outcome, failed: list[Partition]) -> Outcome:
    """A task that failed because every failed partition met the same outage says so in
    its own error_code (SOURCE_UNAVAILABLE, ...) rather than PARTITIONS_FAILED."""
    codes = {p.error_code for p in failed}
    if outcome.status is not TaskStatus.FAILED or len(codes) != 1:
        return outcome
    [code] = codes
    if code not in OUTAGE_CODES:
        return outcome
    msg = f"{outcome.error_msg}: {failed[0].error_msg}"
    return Outcome(outcome.status, code, msg, outcome.success_rate)


def _clean_up_now(rt: Runtime, task: Task, lease: Lease, *, generated: bool) -> None:
    """Right after the terminal move (whose commit recorded the cleanup as due, the
    lease kept): clean up and release; a failure leaves it due, tried again later."""
    try:
        _clean_storage(rt, task, generated=generated)
    except Exception as exc:
        log.warning("cleanup of %s failed: %s", task.task_id, type(exc).__name__)
        errors = rt.store.count_coordinator_error(task.task_id, lease.token)
        if errors is not None:
            _cleanup_later(rt, task, lease, errors)
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


def _finished_by_another(rt: Runtime, task: Task) -> bool:
    """A coordinator that lost its lease may find the task already finished by the one
    that took over, with the very same output keys: those must then stay; and so while
    the task still runs (the one that took over, e.g. after a store outage that let this
    lease lapse, is writing those keys now)."""
    current = rt.store.get_task(task.project_id, task.task_id)
    return current.file_status is FileStatus.GENERATED or current.status is TaskStatus.RUNNING


@dataclass(frozen=True)
class OutputFile:
    record: FileRecord
    details: dict[str, Any]


def _assemble(rt: Runtime, task: Task, done: list[Partition], hb: Heartbeat) -> list[OutputFile]:
    """Stage 70: the committed segments, in partition order, packed into the output files."""
    fmt = rt.format(task)
    try:
        dataset: Dataset | None = rt.store.get_dataset(task.project_id, task.dataset_id)
    except NotFound:
        dataset = None
    columns = columns_for(task, dataset)
    layout = Layout.of(task.plan.output)
    segments = [
        seg
        for p in sorted(done, key=lambda p: p.index)
        if p.part_key
        for seg in read_index(rt.storage, p.part_key)
    ]
    for seg in segments:  # parts are not fsynced: one an OS crash cut short is caught here
        if (size := rt.storage.size(seg.key)) != seg.bytes:
            raise RuntimeError(f"part {seg.key} holds {size} bytes, its index says {seg.bytes}")
    groups = pack(segments, fmt, columns, layout)
    names = file_names(task.file_name, fmt.extension, len(groups))
    files = []
    for name, group in zip(names, groups, strict=True):
        key = output_prefix(task) + name
        written = fmt.assemble(rt.storage, key, group, columns)
        hb.check()
        rows = sum(s.rows for s in group)
        record = FileRecord(
            task.task_id, name, key, rows, written.bytes, written.sha256, fmt.media_type
        )
        files.append(OutputFile(record, written.details))
    return files


def _failed_rows(rt: Runtime, task: Task, failed: list[Any]) -> int:
    """How many selected rows lie in partitions that failed (best effort: 0 if unknown)."""
    if not failed:
        return 0
    try:
        dataset = rt.store.get_dataset(task.project_id, task.dataset_id)
        source, sel = rt.source(dataset), selection_for(task, dataset)
        return sum(source.count(sel, p.bounds) for p in failed)
    except Exception:
        return 0


def _manifest(
    task: Task,
    outcome: Outcome,
    files: list[OutputFile],
    by: dict[PartitionStatus, list[Any]],
    failed_rows: int,
    expires_at: str,
) -> bytes:
    body = {
        "task_id": task.task_id,
        "project_id": task.project_id,
        "dataset_id": task.dataset_id,
        "status": outcome.status.value,
        "format": task.format,
        "columns": task.columns,
        "created_at": task.create_time.isoformat(),
        "completed_at": utcnow().isoformat(),
        "expires_at": expires_at,
        "total_rows": sum(f.record.rows for f in files),
        "failed_rows": failed_rows,
        "success_rate": round(outcome.success_rate, 2),
        "compression": task.plan.output.compression or "none",
        "files": [
            {
                "name": f.record.name,
                "rows": f.record.rows,
                "bytes": f.record.bytes,
                "sha256": f.record.sha256,
                "media_type": f.record.media_type,
                **f.details,
            }
            for f in files
        ],
        "partitions": [
            {
                "index": p.index,
                "status": p.status.value,
                "rows": p.finished_count if p.status is PartitionStatus.DONE else 0,
                "attempts": p.attempts,
                "error_code": p.error_code if p.status is not PartitionStatus.DONE else None,
                "error_msg": p.error_msg if p.status is not PartitionStatus.DONE else None,
            }
            for p in sorted((p for ps in by.values() for p in ps), key=lambda p: p.index)
        ],
        "request": task.request,
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


def _cleanup(rt: Runtime, task: Task, lease: Lease) -> None:
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
    _clean_storage(rt, task, generated=task.file_status is FileStatus.GENERATED)
    if task.status is TaskStatus.CANCELING:
        store.finish_cancel(task.task_id, lease.token)
    else:
        store.release_coordinator(task.task_id, lease.token, due=False)
