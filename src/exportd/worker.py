"""Workers: claim -> heartbeat -> run -> fenced commit, for partitions and coordinator work.

`WorkerPool` runs N worker threads in a process: inside `exportd serve` (embedded) or as
`exportd worker` processes on any host that shares the store and the storage. Next to
them it runs the process's notification threads (notify.NotificationPool): deliveries
never take an export worker's time."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from exportd import coordinator
from exportd.documents import DEFAULT_ARRAYS, KeyCollector, check_width, flat_rows
from exportd.domain import Dataset, Lease, Partition, PartitionPhase, Task, TaskStatus
from exportd.errors import Canceled, LeaseLost, NotFound, SourceError, StoreUnavailable
from exportd.formats import Format, NestingFormat, RowWriter
from exportd.formats.layout import Layout, PartOutput
from exportd.formats.text import CsvFormat, CsvOptions
from exportd.heartbeat import Heartbeat
from exportd.layout import parts_prefix
from exportd.memory import release_memory
from exportd.notify import NotificationPool
from exportd.outages import source_outage
from exportd.retrying import ride_out
from exportd.runtime import Runtime, columns_for, selection_for
from exportd.sources import Selection, Source
from exportd.sources.documents import JsonLinesDocumentSource
from exportd.sources.documents_arrow import CellCache, cached_csv, collect_headers, warm_up
from exportd.sources.fast import fast_path
from exportd.storage import StorageUnavailable
from exportd.sweeper import Sweeper
from exportd.transitions import retry_decision

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
    except NotFound as exc:
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
    arrays = run.task.request.get("arrays", DEFAULT_ARRAYS)
    arrow = arrays == "json" and _arrow_documents(run)
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


def _arrow_documents(run: PartitionRun) -> bool:
    """Whether this partition's documents can go through Arrow (JSON Lines, no filter)."""
    return (
        run.rt.settings.fast_paths
        and isinstance(run.source, JsonLinesDocumentSource)
        and not run.sel.filter
    )


def _csv_options(run: PartitionRun) -> CsvOptions | None:
    """The CSV dialect when the export pass can write rows rendered by the header pass:
    CSV/TSV with the merged header, in one file per partition's part (no split)."""
    fmt = run.rt.format(run.task)
    if (
        not isinstance(fmt, CsvFormat)
        or run.task.request.get("_documents") != "discover"
        or Layout.from_request(run.task.request).split
    ):
        return None
    return fmt.options


def _cell_cache(run: PartitionRun, stored: dict[str, Any] | None = None) -> CellCache | None:
    opts = _csv_options(run)
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
    mode = run.task.request.get("_documents")
    if mode is None or mode == "nested":
        return run.batches()
    arrays = run.task.request.get("arrays", DEFAULT_ARRAYS)
    header = run.task.columns if mode == "discover" else run.sel.columns
    return flat_rows(run.batches(), header, arrays, strict=mode == "discover")


def _export(run: PartitionRun, hb: Heartbeat) -> None:
    """Export pass (stage 60): write the partition into its own part (segments within
    the layout's limits, through a fast path where one applies), then commit it."""
    task, part, lease, rt = run.task, run.part, run.lease, run.rt
    fmt = rt.format(task)
    folder = part_folder(task, part, lease)
    layout = Layout.from_request(task.request)
    columns = columns_for(task, run.dataset)
    committed = False
    try:
        with PartOutput(rt.storage, folder, fmt, columns, layout, _writer(fmt, task)) as out:
            documents = task.request.get("_documents") is not None
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
    if task.request.get("_documents") == "nested":
        return cast(NestingFormat, fmt).document_writer
    return None


class Worker:
    """One worker: does coordinator work first (it unblocks whole tasks), then partitions
    (claimed fairly across projects by the store)."""

    def __init__(self, rt: Runtime, name: str, janitor: Janitor) -> None:
        self.rt = rt
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{name}"
        self.janitor = janitor

    def step(self) -> bool:
        """Do one unit of work if any is available; False when there was none."""
        store, lease_s = self.rt.store, self.rt.settings.lease_seconds
        self.janitor.maybe_run()
        claim = store.claim_coordinator(self.owner, lease_s)
        if claim is not None:
            coordinator.run(self.rt, *claim)
            release_memory()
            return True
        pclaim = store.claim_partition(self.owner, lease_s)
        if pclaim is not None:
            run_partition(self.rt, *pclaim)
            release_memory()
            return True
        return False

    def run(self, stop: threading.Event) -> None:
        """Work until stopped. Every store call of this thread (claims, commits, the
        coordinator's and the janitor's) rides out a store outage for up to
        `outage_budget_seconds`."""
        with self.rt.store.riding_out(self.rt.settings.outage_budget_seconds):
            while not stop.is_set():
                try:
                    if not self.step():
                        self.rt.store.waker.wait(self.rt.settings.poll_seconds)
                except StoreUnavailable:
                    log.warning("worker %s: the store stayed unreachable", self.owner)
                    stop.wait(1.0)
                except Exception:  # a worker never dies of one bad unit of work
                    log.exception("worker %s: step failed", self.owner)
                    stop.wait(1.0)


class Janitor:
    """Reclaims expired leases, times tasks out, deletes expired files and, now and
    then, sweeps the storage for orphans (`exportd.sweeper`); run by the workers every
    few seconds."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._next = 0.0
        self._next_sweep = 0.0
        self._lock = threading.Lock()
        self.sweeper = Sweeper(rt)

    def maybe_run(self) -> None:
        now = time.monotonic()
        if now < self._next or not self._lock.acquire(blocking=False):
            return
        try:
            self._next = now + self.rt.settings.janitor_seconds
            s = self.rt.settings
            done = self.rt.store.reap(s.max_lost, grace=s.lease_seconds)
            done["files_expired"] = self.expire_files()
            if now >= self._next_sweep:  # lists the whole storage: now and then
                self._next_sweep = now + self.rt.settings.sweep_seconds
                done.update(self.sweeper.sweep())
            if any(done.values()):
                log.info("janitor: %s", done)
        finally:
            self._lock.release()

    def expire_files(self) -> int:
        """Delete the files whose `expires_in` has passed, then mark them DELETED (in this
        order: a crash in between leaves them to be deleted again, never orphaned)."""
        expired = self.rt.store.expired_files(self.rt.settings.expiry_batch)
        for task_id, keys in expired:
            for key in keys:
                self.rt.storage.delete(key)
            self.rt.store.mark_files_deleted(task_id)
        return len(expired)


class WorkerPool:
    """`count` export workers and, when there are any, the notification threads of the
    process (a process without workers does no background work at all)."""

    def __init__(self, rt: Runtime, count: int) -> None:
        self.rt = rt
        self.stop_event = threading.Event()
        self.notifications = NotificationPool(rt, rt.settings.notify_workers if count else 0)
        janitor = Janitor(rt)
        self.threads = [
            threading.Thread(
                target=Worker(rt, f"w{i}", janitor).run,
                args=(self.stop_event,),
                name=f"exportd-worker-{i}",
                daemon=True,
            )
            for i in range(count)
        ]

    def start(self) -> None:
        if self.threads:  # what pyarrow loads on its first compute call, while idle
            threading.Thread(target=warm_up, name="exportd-warm-up", daemon=True).start()
        for t in self.threads:
            t.start()
        self.notifications.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers and the notification threads, each finishing the unit of work
        in hand, all within `timeout` seconds."""
        self.stop_event.set()
        self.notifications.stop_event.set()
        self.rt.store.waker.notify_local()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.notifications.stop(deadline)
