"""An export's work on one partition: its header pass (stage 20: the flattened keys of
its documents, committed; the partition then waits for the merge) or its export pass
(stage 60: its rows into its own part, through a fast path where one applies)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO, cast

from exportd import metrics
from exportd.documents.flatten import KeyCollector, check_width, flat_rows
from exportd.errors import SourceError
from exportd.execution.export.bisect import Bisection, bisectable
from exportd.execution.heartbeat import Heartbeat
from exportd.execution.partition import PartitionRun, discard, part_folder
from exportd.fastpaths import cached_cells, documents_through_arrow, fast_path
from exportd.fastpaths.jsonl_csv import CellCache, cached_csv, collect_headers
from exportd.formats import Format, NestingFormat, RowWriter
from exportd.formats.splitting import Layout, PartOutput
from exportd.model import Task
from exportd.model.plan import DocumentMode
from exportd.runtime import columns_for
from exportd.sources.sql import SqlSource
from exportd.sources.sql_ranges import KeyRanges

log = logging.getLogger(__name__)


def header_pass(run: PartitionRun, hb: Heartbeat) -> None:
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
            discard(run, cache.folder)


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


def export_pass(run: PartitionRun, hb: Heartbeat) -> None:
    """Export pass (stage 60): write the partition into its own part (segments within
    the layout's limits, through a fast path where one applies), then commit it."""
    task, part, lease, rt = run.task, run.part, run.lease, run.rt
    fmt = rt.format(task)
    folder = part_folder(task, part, lease)
    layout = Layout.of(task.plan.output)
    columns = columns_for(task, run.dataset)
    committed = False
    failed: Bisection | None = None
    documents = task.plan.documents is not None
    try:
        try:
            with PartOutput(rt.storage, folder, fmt, columns, layout, _writer(fmt, task)) as out:
                fast = None if documents else fast_path(run.source, fmt, layout, columns, rt.settings.fast_paths)  # fmt: skip
                if fast is not None:
                    fast.export(run.sel, part.bounds, out, hb)
                elif not (documents and _export_cached_documents(run, out, hb)):
                    for batch in _rows(run):
                        hb.check()
                        out.write(batch)
                        hb.progress(out.rows, out.size)
                result = out.finish()
        except SourceError as exc:
            # a SQL read that failed on some rows: isolate them, keep every other row
            if not (task.allow_partial and documents is False and bisectable(run.source, exc)):
                raise
            log.info("%s: %s; isolating the failing rows", run.where, exc.error_msg)
            discard(run, folder)
            folder = part_folder(task, part, lease, kind="b")
            with PartOutput(rt.storage, folder, fmt, columns, layout, _writer(fmt, task)) as out:
                ranges = KeyRanges(cast(SqlSource, run.source), run.sel, part.bounds)
                failed = Bisection(ranges, out, hb, rt.settings.batch_size)
                failed.run()
                result = out.finish()
            log.info(
                "%s: %d failing rows isolated in %d range reads",
                run.where, failed.failed_count, failed.reads,
            )  # fmt: skip
        if rt.settings.debug_pause_before_commit:
            time.sleep(rt.settings.debug_pause_before_commit)
        hb.check()
        committed = rt.store.commit_partition(
            task.task_id, part.index, lease.token, result.key, result.rows, result.bytes,
            result.sha256,
            failed_items=None if failed is None else failed.failed,
            failed_count=0 if failed is None else failed.failed_count,
        )  # fmt: skip
        if committed:
            metrics.committed(result.rows, result.bytes)
            log.info("%s committed: %d rows, %d bytes", run.where, result.rows, result.bytes)
        else:
            metrics.fenced()
            log.warning("%s: lease lost before commit", run.where)
    finally:
        if not committed:
            discard(run, folder)


def _writer(fmt: Format, task: Task) -> Callable[[BinaryIO], RowWriter] | None:
    """Documents kept nested go through the format's document writer."""
    if task.plan.documents is DocumentMode.NESTED:
        return cast(NestingFormat, fmt).document_writer
    return None
