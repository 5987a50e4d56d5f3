"""The end of an export: the header merge between the passes (stage 30), the outcome
of its partitions, assembly (70), manifest (80) and the terminal move (90)."""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta
from typing import Any

from exportd import metrics
from exportd.documents.flatten import MAX_COLUMNS, merge_headers
from exportd.execution import snapshots
from exportd.execution.cleanup import clean_up_now
from exportd.execution.export.assembly import assemble, manifest_body
from exportd.execution.heartbeat import Heartbeat
from exportd.model import (
    FileRecord,
    FileStatus,
    Lease,
    Partition,
    PartitionStatus,
    Stage,
    Task,
    TaskStatus,
)
from exportd.model.lifecycle import (
    Outcome,
    finish_outcome,
    item_outcome,
)
from exportd.runtime import Runtime, selection_for
from exportd.storage.keys import output_prefix
from exportd.store import utcnow


def between_passes(rt: Runtime, task: Task, lease: Lease) -> None:
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


def finish(rt: Runtime, task: Task, lease: Lease, hb: Heartbeat) -> None:
    store, storage = rt.store, rt.storage
    snapshots.holders(rt).release(task.task_id)  # every partition has stopped
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
    # rows that failed inside committed partitions (isolated by bisection): items
    failed_items = sum(p.failed_count for p in by[PartitionStatus.DONE])
    outcome = item_outcome(
        outcome, finished, failed_rows, failed_items, task.allow_partial, task.max_error_rate
    )
    failed_rows += failed_items
    if outcome.status is TaskStatus.FAILED:
        if store.finish_task(
            task.task_id, lease.token, outcome, [], None, finished, failed_rows, 0
        ):
            clean_up_now(rt, task, lease, generated=False)
        else:  # timed out (or lost) meanwhile: its cleanup is due again
            store.release_coordinator(task.task_id, lease.token, due=True)
        return

    if not task.plan.output.split:  # stage 70 is the assembly of one single file
        store.set_task_stage(task.task_id, lease.token, Stage.COMPLETING_UPLOAD)
    files = assemble(rt, task, by[PartitionStatus.DONE], hb)
    # the lease confirmed now, not at the last heartbeat: a coordinator cut off during
    # the assembly, back after another took the task over, must not replace the
    # manifest the other wrote (its sha256 is the one the store records)
    hb.beat_now()
    hb.check()
    store.set_task_stage(task.task_id, lease.token, Stage.WRITING_MANIFEST)
    expires = utcnow() + timedelta(seconds=task.expires_in)
    manifest = manifest_body(task, outcome, files, by, failed_rows, expires.isoformat())
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
        clean_up_now(rt, task, lease, generated=True)
    elif _finished_by_another(rt, task):  # a late coordinator: its terminal move fenced
        metrics.fenced()
    else:  # canceled or timed out meanwhile
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


def _finished_by_another(rt: Runtime, task: Task) -> bool:
    """A coordinator that lost its lease may find the task already finished by the one
    that took over, with the very same output keys: those must then stay; and so while
    the task still runs (the one that took over, e.g. after a store outage that let this
    lease lapse, is writing those keys now)."""
    current = rt.store.get_task(task.project_id, task.task_id)
    return current.file_status is FileStatus.GENERATED or current.status is TaskStatus.RUNNING


def _failed_rows(rt: Runtime, task: Task, failed: list[Any]) -> int:
    """How many selected rows lie in partitions that failed (best effort: 0 if unknown)."""
    if not failed:
        return 0
    try:
        dataset = rt.store.get_dataset(task.project_id, task.dataset_id)
        source, sel = rt.source(dataset, task.snapshot_id), selection_for(task, dataset)
        return sum(source.count(sel, p.bounds) for p in failed)
    except Exception:
        return 0
