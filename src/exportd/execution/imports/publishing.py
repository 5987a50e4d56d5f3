"""The end of an import: the partitions' results, duplicate keys across the whole file,
the decision (`import_outcome`), the publish of every partition's rows (files COPYed
straight into the target, see `staged`; or staging tables) in one target transaction
(stage 70, fenced: see `sources/targets.py`), the error report and the
manifest (80) and the terminal move (90). Failure, cancel and timeout publish nothing
and drop the staging tables, so the target is left exactly as it was."""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson

from exportd.errors import LeaseLost
from exportd.execution.cleanup import clean_up_now
from exportd.execution.heartbeat import Heartbeat
from exportd.execution.imports import staged
from exportd.execution.imports.files import read_options, source_file
from exportd.formats.readers import read_records
from exportd.model import (
    FileRecord,
    Lease,
    Partition,
    PartitionStatus,
    Stage,
    Task,
    TaskStatus,
)
from exportd.model.lifecycle import Outcome
from exportd.model.plan import ImportMode, ImportSpec
from exportd.runtime import Runtime
from exportd.sources.targets import CopyRejected, Target
from exportd.storage.keys import output_prefix, parts_prefix
from exportd.store import utcnow

if TYPE_CHECKING:
    from exportd.execution.imports.streaming import Stream

log = logging.getLogger(__name__)

MAX_ITEMS = 1000
REPORT_NAME = "rejected_rows.csv"


def import_outcome(loaded: int, rejected: int, spec: ImportSpec, allow_partial: bool) -> Outcome:
    """COMPLETED without rejected rows; COMPLETED_WITH_ERRORS while the rejected rows stay
    within `max_errors` and `max_error_rate` (given), or with `allow_partial` (neither
    given); FAILED otherwise (nothing is published)."""
    total = loaded + rejected
    rate = 100.0 * loaded / total if total else 100.0
    if rejected == 0:
        return Outcome(TaskStatus.COMPLETED, None, None, rate)
    limited = spec.max_errors is not None or spec.max_error_rate is not None
    within = (spec.max_errors is None or rejected <= spec.max_errors) and (
        spec.max_error_rate is None or rejected / total <= spec.max_error_rate
    )
    if (limited and within) or (not limited and allow_partial):
        return Outcome(TaskStatus.COMPLETED_WITH_ERRORS, None, None, rate)
    msg = f"{rejected} of {total} rows were rejected"
    if spec.max_errors is not None:
        msg += f" (max_errors {spec.max_errors})"
    if spec.max_error_rate is not None:
        msg += f" (max_error_rate {spec.max_error_rate:g})"
    return Outcome(TaskStatus.FAILED, "TOO_MANY_ERRORS", msg + "; nothing was imported", rate)


def target_of(rt: Runtime, task: Task) -> Target:
    dataset = rt.store.get_dataset(task.project_id, task.dataset_id)
    engine = rt.targets.get(rt.connections.dataset_url(dataset))
    return Target.reflect_for(engine, dataset.table or "", task.task_id)


def clean_up(rt: Runtime, task: Task) -> None:
    """Drop every staging table of the task (any attempt's): after its end, whatever it was."""
    try:
        target = target_of(rt, task)
    except Exception as exc:  # the dataset is gone: nothing of ours can be reached
        log.warning("import %s: target unreachable for the cleanup (%s)", task.task_id, exc)
        return
    target.drop_stages(target.stages_of(task.task_id))


def _results(rt: Runtime, done: list[Partition]) -> list[dict[str, Any]]:
    out = []
    for p in sorted(done, key=lambda p: p.index):
        with rt.storage.open_read(p.part_key or "") as f:
            out.append(orjson.loads(f.read()))
    return out


def _duplicates(
    rt: Runtime, task: Task, target: Target, stages: list[str]
) -> list[tuple[int, str]]:
    """The rows that repeat a key, found once and kept (a coordinator that takes over
    after the staging tables lost them reads the same list)."""
    spec = task.plan.imports
    assert spec is not None
    key = parts_prefix(task) + "duplicates.json"
    if rt.storage.exists(key):
        with rt.storage.open_read(key) as f:
            return [(int(a), str(b)) for a, b in orjson.loads(f.read())]
    found = target.duplicates(stages, spec.key, spec.mode)
    with rt.storage.open_write(key) as out:
        out.write(orjson.dumps(found))
    return found


def finish(
    rt: Runtime, task: Task, lease: Lease, hb: Heartbeat, stream: Stream | None = None
) -> None:
    """The end of an import (see the module's docstring); `stream`: the publish begun
    while the partitions ran (`streaming`), whose transaction this commits or rolls back."""
    store = rt.store
    spec = task.plan.imports
    assert spec is not None
    by = {s: [p for p in task.partitions if p.status is s] for s in PartitionStatus}
    target = target_of(rt, task)
    if by[PartitionStatus.FAILED] or by[PartitionStatus.CANCELED]:
        failed = (by[PartitionStatus.FAILED] or by[PartitionStatus.CANCELED])[0]
        code = failed.error_code or "PARTITIONS_FAILED"
        msg = f"partition {failed.index} failed: {failed.error_msg}; nothing was imported"
        _fail(rt, task, lease, target, Outcome(TaskStatus.FAILED, code, msg, 0.0), 0, 0)
        return
    results = _results(rt, by[PartitionStatus.DONE])
    filed = [r for r in results if r.get("data")]
    fallback_key = parts_prefix(task) + staged.FALLBACK
    if filed:
        if not rt.storage.exists(fallback_key) and _finish_files(
            rt, task, lease, hb, target, results, stream
        ):
            return
        if stream is not None:  # its marker row would keep the fallback's publish waiting
            stream.tx.rollback()
        with rt.storage.open_write(fallback_key) as out:  # any coordinator after: tables
            out.write(b"{}")
        names = loaded_columns(task, target)
        staged.to_stages(rt.storage, target, task.task_id, filed, names)
    stages = [r["stage"] for r in results]
    dups = _duplicates(rt, task, target, stages)
    loaded = sum(r["loaded"] for r in results) - len(dups)
    rejected = sum(r["rejected"] for r in results) + len(dups)
    items = _items(results, dups)
    outcome = import_outcome(loaded, rejected, spec, task.allow_partial)
    if outcome.status is TaskStatus.FAILED:
        store.set_failed_items(task.task_id, lease.token, items)
        _fail(rt, task, lease, target, outcome, loaded, rejected)
        return
    store.set_task_stage(task.task_id, lease.token, Stage.COMPLETING_UPLOAD)
    _publish(rt, task, lease, target, stages, [n for n, _ in dups], loaded)
    hb.check()
    _complete(rt, task, lease, outcome, results, dups, items, "tables" if filed else "staging")


def _finish_files(
    rt: Runtime, task: Task, lease: Lease, hb: Heartbeat, target: Target,
    results: list[dict[str, Any]], stream: Stream | None = None,
) -> bool:  # fmt: skip
    """The end of an import whose partitions staged their rows as files (`staged`):
    the duplicates from the key files, the files COPYed into the target in one
    transaction. False: the staging tables decide instead (a partition staged in a
    table; the target refused a row; a failure whose count the table's keys could
    change)."""
    store = rt.store
    spec = task.plan.imports
    assert spec is not None
    if not all(r.get("data") for r in results):
        return False
    started = time.monotonic()
    for r in results:
        staged.check_sizes(rt.storage, r)
    if stream is not None and not _streamed_all(stream, results):
        log.warning("import %s: the streamed publish sent other files than the partitions'; "
                    "published again from the start", task.task_id)  # fmt: skip
        stream.tx.rollback()
        stream = None
    # the stream found the duplicates partition by partition as it sent them
    dups = stream.found.found if stream else staged.duplicates(rt.storage, results, spec.key)
    found = time.monotonic()
    loaded = sum(r["loaded"] for r in results) - len(dups)
    rejected = sum(r["rejected"] for r in results) + len(dups)
    items = _items(results, dups)
    outcome = import_outcome(loaded, rejected, spec, task.allow_partial)
    if outcome.status is TaskStatus.FAILED:  # (a stream is rolled back by its caller)
        if spec.mode is ImportMode.APPEND and spec.key:
            return False  # keys already in the table would be rejected rows too
        store.set_failed_items(task.task_id, lease.token, items)
        _fail(rt, task, lease, target, outcome, loaded, rejected)
        return True
    store.set_task_stage(task.task_id, lease.token, Stage.COMPLETING_UPLOAD)
    if not target.published(task.task_id):
        names = loaded_columns(task, target)
        skip = {n for n, _ in dups}
        feeds = [] if stream else [staged.feed(rt.storage, r, names, skip) for r in results]
        try:
            done = target.publish_files(
                task.task_id,
                names,
                feeds,
                spec.mode,
                loaded,
                _still_mine(rt, task, lease),
                stream.tx if stream else None,
            )
        except CopyRejected as exc:
            log.info("import %s: the target refused the staged files (%s): staging tables",
                     task.task_id, exc)  # fmt: skip
            return False
        if not done and not target.published(task.task_id):
            raise LeaseLost()
    copied = time.monotonic()
    target.drop_stages(target.stages_of(task.task_id))
    hb.check()
    _complete(rt, task, lease, outcome, results, dups, items, "files", stream is not None)
    log.info(
        "import %s: duplicates %.3f s, publish (COPY of %d files) %.3f s, report and "
        "end %.3f s", task.task_id, found - started, len(results), copied - found,
        time.monotonic() - copied,
    )  # fmt: skip
    return True


def _streamed_all(stream: Stream, results: list[dict[str, Any]]) -> bool:
    """Whether the stream sent exactly these partitions' files (the same attempts)."""
    return [r.get("data") for r in stream.found.results] == [r.get("data") for r in results]


def _still_mine(rt: Runtime, task: Task, lease: Lease) -> Callable[[], bool]:
    """Asked just before the publish commits: the coordinator's lease, renewed, and the
    task still RUNNING (not canceled, not timed out)."""

    def still_mine() -> bool:
        if rt.settings.debug_pause_in_publish:
            time.sleep(rt.settings.debug_pause_in_publish)
        if not rt.store.renew_coordinator(task.task_id, lease.token, rt.settings.lease_seconds):
            return False
        return rt.store.get_task(task.project_id, task.task_id).status is TaskStatus.RUNNING

    return still_mine


def _complete(
    rt: Runtime, task: Task, lease: Lease, outcome: Outcome, results: list[dict[str, Any]],
    dups: list[tuple[int, str]], items: list[dict[str, Any]], published_from: str,
    streamed: bool = False,
) -> None:  # fmt: skip
    """Stage 80 and the terminal move of a published import."""
    store = rt.store
    loaded = sum(r["loaded"] for r in results) - len(dups)
    rejected = sum(r["rejected"] for r in results) + len(dups)
    store.set_task_stage(task.task_id, lease.token, Stage.WRITING_MANIFEST)
    store.set_failed_items(task.task_id, lease.token, items)
    records = _report(rt, task, results, dups) if rejected else []
    expires = utcnow() + timedelta(seconds=task.expires_in)
    data = _manifest(task, outcome, records, results, loaded, rejected, expires.isoformat(),
                     published_from, streamed)  # fmt: skip
    manifest_key = output_prefix(task) + "manifest.json"
    with rt.storage.open_write(manifest_key) as out:
        out.write(data)
    records.append(
        FileRecord(
            task.task_id,
            "manifest.json",
            manifest_key,
            0,
            len(data),
            hashlib.sha256(data).hexdigest(),
            "application/json",
            kind="manifest",
        )
    )
    ok = store.finish_task(
        task.task_id, lease.token, outcome, records, expires, loaded, rejected,
        sum(r.bytes for r in records),
    )  # fmt: skip
    if ok:
        clean_up_now(rt, task, lease, generated=True)
    else:
        store.release_coordinator(task.task_id, lease.token, due=True)


def _fail(
    rt: Runtime,
    task: Task,
    lease: Lease,
    target: Target,
    outcome: Outcome,
    loaded: int,
    rejected: int,
) -> None:
    target.drop_stages(target.stages_of(task.task_id))
    if rt.store.finish_task(task.task_id, lease.token, outcome, [], None, loaded, rejected, 0):
        clean_up_now(rt, task, lease, generated=False)


def _publish(
    rt: Runtime, task: Task, lease: Lease, target: Target, stages: list[str],
    dup_lines: list[int], loaded: int,
) -> None:  # fmt: skip
    """Stage 70: every staging table into the target in one transaction, once."""
    spec = task.plan.imports
    assert spec is not None
    if not target.published(task.task_id):
        target.delete_lines(stages, dup_lines)
        still_mine = _still_mine(rt, task, lease)
        columns = loaded_columns(task, target)
        done = target.publish(
            task.task_id, stages, columns, spec.mode, spec.key, loaded, still_mine
        )
        if not done and not target.published(task.task_id):
            raise LeaseLost()
    target.drop_stages(target.stages_of(task.task_id))


def loaded_columns(task: Task, target: Target) -> list[str]:
    from exportd.execution.imports.loading import Checker

    return Checker.of(task, target).loaded


def _items(results: list[dict[str, Any]], dups: list[tuple[int, str]]) -> list[dict[str, Any]]:
    found = [i for r in results for i in r["items"]]
    found += [{"line": n, "column": None, "reason": why} for n, why in dups]
    return sorted(found, key=lambda i: int(i["line"]))[:MAX_ITEMS]


def _rejected_lines(
    rt: Runtime, results: list[dict[str, Any]]
) -> Iterator[tuple[int, list[str], str]]:
    for r in results:
        with rt.storage.open_read(r["errors"]) as f:
            for line in f:
                row = orjson.loads(line)
                yield int(row["line"]), list(row["reasons"]), str(row["raw"])


def _dup_lines(
    rt: Runtime, task: Task, dups: list[tuple[int, str]]
) -> Iterator[tuple[int, list[str], str]]:
    """The duplicates with their original text (read again from the file)."""
    spec = task.plan.imports
    assert spec is not None
    if not dups:
        return
    why = dict(dups)
    with source_file(rt, spec) as path:
        for p in sorted(task.partitions, key=lambda p: p.index):
            for rec in read_records(path, read_options(spec), p.bounds, list(task.columns)):
                if rec.line in why:
                    yield rec.line, [why[rec.line]], rec.raw


def _report(
    rt: Runtime, task: Task, results: list[dict[str, Any]], dups: list[tuple[int, str]]
) -> list[FileRecord]:
    """Stage 80: the rejected rows, in file order: line, reasons, the original text."""
    key = output_prefix(task) + REPORT_NAME
    digest = hashlib.sha256()
    size = 0
    with rt.storage.open_write(key) as out:
        merged = heapq.merge(_rejected_lines(rt, results), _dup_lines(rt, task, dups))
        for chunk in _csv_chunks(merged):
            data = chunk.encode()
            out.write(data)
            digest.update(data)
            size += len(data)
    rows = sum(r["rejected"] for r in results) + len(dups)
    return [FileRecord(task.task_id, REPORT_NAME, key, rows, size, digest.hexdigest(), "text/csv")]


def _csv_chunks(rows: Iterator[tuple[int, list[str], str]]) -> Iterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["line", "reasons", "original"])
    for n, (line, reasons, raw) in enumerate(rows):
        w.writerow([line, "; ".join(reasons), raw])
        if n % 1000 == 999:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _manifest(
    task: Task, outcome: Outcome, files: list[FileRecord], results: list[dict[str, Any]],
    loaded: int, rejected: int, expires_at: str, published_from: str, streamed: bool,
) -> bytes:  # fmt: skip
    spec = task.plan.imports
    assert spec is not None
    body = {
        "task_id": task.task_id,
        "kind": "import",
        "project_id": task.project_id,
        "dataset_id": task.dataset_id,
        "status": outcome.status.value,
        "source": spec.source_name,
        "format": spec.format,
        "mode": spec.mode.value,
        "created_at": task.create_time.isoformat(),
        "completed_at": utcnow().isoformat(),
        "expires_at": expires_at,
        "imported_rows": loaded,
        "rejected_rows": rejected,
        "success_rate": round(outcome.success_rate, 2),
        # what the publish COPYed or INSERTed from: "files" (rows staged as files and
        # COPYed into the target), "staging" (staging tables), "tables" (staged as
        # files, then moved into staging tables: the target refused the files' COPY)
        "published_from": published_from,
        # the files were COPYed while the partitions ran (`streaming`), not after them
        "publish_streamed": streamed,
        "files": [
            {
                "name": f.name,
                "rows": f.rows,
                "bytes": f.bytes,
                "sha256": f.sha256,
                "media_type": f.media_type,
                "role": "rejected_rows",
            }
            for f in files
        ],
        "partitions": [
            {
                "index": i,
                "loaded": r["loaded"],
                "rejected": r["rejected"],
                "fast_path": r.get("fast_path", False),
                "checked_in_c": r.get("checked_in_c", False),
                "checked_in_python": r.get("checked_in_python"),
                "staged_as": "file" if r.get("data") else "table",
            }
            for i, r in enumerate(results)
        ],
        "request": task.request,
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"
