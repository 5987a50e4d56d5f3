"""One attempt at a partition under its lease: the header pass (stage 20) or the export
into its own part (stage 60), committed fenced by the lease token; every failure ends in a
retry or a FAILED."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from exportd.documents.flatten import KeyCollector, check_width, flat_rows
from exportd.errors import (
    Canceled,
    ExportdError,
    LeaseLost,
    SourceError,
    StoreUnavailable,
)
from exportd.execution.heartbeat import Heartbeat
from exportd.fastpaths import cached_cells, documents_through_arrow, fast_path
from exportd.fastpaths.jsonl_csv import CellCache, cached_csv, collect_headers
from exportd.formats import Format, NestingFormat, RowWriter
from exportd.formats.splitting import Layout, PartOutput
from exportd.model import Dataset, Lease, Partition, PartitionPhase, Task, TaskStatus
from exportd.model.lifecycle import retry_decision
from exportd.model.plan import DocumentMode
from exportd.outages import source_outage
from exportd.retrying import ride_out
from exportd.runtime import Runtime, columns_for, selection_for
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

    def batches(self) -> Iterator[Sequence[Sequence[Any]]]:
        return self.source.read(self.sel, self.part.bounds, self.rt.settings.batch_size)

    @property
    def where(self) -> str:
        return f"partition {self.task.task_id}/{self.part.index}"


def run_partition(rt: Runtime, task: Task, part: Partition, lease: Lease) -> None:
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
        source, sel = rt.source(dataset), selection_for(task, dataset)
        run = PartitionRun(rt, task, part, lease, dataset, source, sel)
    except (ExportdError, SourceError) as exc:  # the dataset or its connection is gone
        store.fail_partition(
            task.task_id, part.index, lease.token, exc.error_code, exc.error_msg, None
        )
        return
    work = _collect_headers if part.phase is PartitionPhase.HEADERS else _export
    try:
        with Heartbeat(run.beat, rt.settings.heartbeat_interval, TaskStatus.RUNNING) as hb:
            ride_out(
                lambda: work(run, hb),
                transient=source_outage(rt.settings.outage_budget_seconds),
                budget=math.inf,  # counted from the first failure instead, by source_outage
                what=f"{run.where}: reading the source",
            )
    except LeaseLost:
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


def _collect_headers(run: PartitionRun, hb: Heartbeat) -> None:
    """Header pass (stage 20): the flattened keys of every document of the partition,
    committed with the lease; the partition then waits for the merge (stage 40). JSON
    Lines documents go through Arrow, which also renders the rows for a CSV export."""
    arrays = run.task.plan.arrays
    arrow = arrays == "json" and documents_through_arrow(
        run.source, run.sel, run.rt.settings.fast_paths
    )
    cache = _cell_cache(run) if arrow else None
    committed = False
    try:
        if arrow:
            segments = run.part.bounds["segments"]
            paths, documents, chunks = collect_headers(segments, hb.check, cache)
            check_width(paths)
        else:
            keys = KeyCollector(arrays)
            for batch in run.batches():
                hb.check()
                keys.add(batch)
            paths, documents = keys.keys, keys.documents
        hb.check()
        stored = None if cache is None else {"folder": cache.folder, "chunks": chunks}
        committed = run.rt.store.commit_headers(
            run.task.task_id, run.part.index, run.lease.token, paths, documents, stored
        )
        if not committed:
            log.warning("%s: lease lost before the header commit", run.where)
    finally:
        if cache is not None and not committed:
            _discard(run, cache.folder)


def _cell_cache(run: PartitionRun, stored: dict[str, Any] | None = None) -> CellCache | None:
    opts = cached_cells(run.rt.format(run.task), run.task.plan)
    if opts is None:
        return None
    if stored is not None:
        return CellCache(run.rt.storage, stored["folder"], opts)
    folder = part_folder(run.task, run.part, run.lease, kind="h")
    return CellCache(run.rt.storage, folder, opts)


def _export_cached_documents(run: PartitionRun, out: PartOutput, hb: Heartbeat) -> bool:
    """The export pass from the rows the header pass rendered (False: none were kept)."""
    stored: dict[str, Any] | None = (run.part.header or {}).get("cache")
    if stored is None or not run.task.columns:
        return False
    cache = _cell_cache(run, stored)
    if cache is None:
        return False
    out.write_encoded(b"", 0)  # the part exists, even without rows
    for data, rows in cached_csv(cache, int(stored["chunks"]), run.task.columns, hb.check):
        out.write_encoded(data, rows)
        hb.progress(out.rows, out.size)
    return True


def _rows(run: PartitionRun) -> Iterator[Sequence[Sequence[Any]]]:
    """The partition's rows as the format receives them: as read, documents as they
    are, or documents flattened to the merged header or to the projected paths."""
    mode = run.task.plan.documents
    if mode is None or mode is DocumentMode.NESTED:
        return run.batches()
    discover = mode is DocumentMode.DISCOVER
    header = run.task.columns if discover else run.sel.columns
    return flat_rows(run.batches(), header, run.task.plan.arrays, strict=discover)


def _export(run: PartitionRun, hb: Heartbeat) -> None:
    """Export pass (stage 60): write the partition into its own part (segments within
    the layout's limits, through a fast path where one applies), then commit it."""
    task, part, lease, rt = run.task, run.part, run.lease, run.rt
    fmt = rt.format(task)
    folder = part_folder(task, part, lease)
    layout = Layout.of(task.plan.output)
    columns = columns_for(task, run.dataset)
    committed = False
    try:
        with PartOutput(rt.storage, folder, fmt, columns, layout, _writer(fmt, task)) as out:
            documents = task.plan.documents is not None
            fast = None if documents else fast_path(run.source, fmt, layout, columns, rt.settings.fast_paths)  # fmt: skip
            if fast is not None:
                fast.export(run.sel, part.bounds, out, hb)
            elif not (documents and _export_cached_documents(run, out, hb)):
                for batch in _rows(run):
                    hb.check()
                    out.write(batch)
                    hb.progress(out.rows, out.size)
            result = out.finish()
        if rt.settings.debug_pause_before_commit:
            time.sleep(rt.settings.debug_pause_before_commit)
        hb.check()
        committed = rt.store.commit_partition(
            task.task_id, part.index, lease.token, result.key, result.rows, result.bytes,
            result.sha256,
        )  # fmt: skip
        if not committed:
            log.warning("%s: lease lost before commit", run.where)
    finally:
        if not committed:
            _discard(run, folder)


def _discard(run: PartitionRun, folder: str) -> None:
    """Delete an uncommitted attempt's folder, best effort: whatever stays is under the
    task's parts prefix, which the task's cleanup and the sweeper delete in the end; the
    attempt's own error is the one that counts."""
    try:
        run.rt.storage.delete_prefix(folder)
    except Exception as exc:
        log.warning("%s: attempt folder left for the cleanup (%s)", run.where, type(exc).__name__)


def _writer(fmt: Format, task: Task) -> Callable[[BinaryIO], RowWriter] | None:
    """Documents kept nested go through the format's document writer."""
    if task.plan.documents is DocumentMode.NESTED:
        return cast(NestingFormat, fmt).document_writer
    return None
