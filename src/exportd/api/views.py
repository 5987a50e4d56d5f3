"""How tasks, partitions, files and datasets are shown by the native API (JSON)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from exportd.api.seed_mapping import DISCARDED, current_state, seed002_status, shown_file_name
from exportd.delivery.links import LinkSigner
from exportd.model import (
    Dataset,
    FileRecord,
    Notification,
    NotificationStatus,
    Partition,
    PartitionStatus,
    Stage,
    Task,
    TaskKind,
)
from exportd.model.status import IMPORT_STAGE_TEXTS
from exportd.retrying import backoff
from exportd.sources.connections import Connection


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


RETRY_AFTER_MAX = 30
RETRY_AFTER_DOUBLING_SECONDS = 15


def retry_after_seconds(task: Task, now: datetime | None = None) -> int | None:
    """How long a poller should wait (seed 002's exponential backoff, 1 s -> 30 s): 1 s for
    a young task, doubling every 15 s of its age (1, 2, 4, 8, 16) up to 30 s; None once
    terminal (stop polling)."""
    if task.status.is_terminal:
        return None
    age = max(((now or datetime.now(UTC)) - task.create_time).total_seconds(), 0.0)
    return int(backoff(1 + int(age // RETRY_AFTER_DOUBLING_SECONDS), 1, RETRY_AFTER_MAX))


def partition_json(p: Partition) -> dict[str, Any]:
    return {
        "index": p.index,
        "status": p.status.value,
        "phase": p.phase.value,
        "current_state": p.stage.as_json(),
        "finished_count": p.finished_count,
        "bytes_written": p.bytes_written,
        "attempts": p.attempts,
        "lost_count": p.lost_count,
        "error_code": p.error_code,
        "error_msg": p.error_msg,
        "start_time": iso(p.start_time),
        "end_time": iso(p.end_time),
        "update_time": iso(p.update_time),
    }


def file_json(
    task: Task, f: FileRecord, base: str, links: LinkSigner | None = None
) -> dict[str, Any]:
    """A file: its API route (needs a token) and, while it exists, a signed link that
    works without one until `url_expires_at`."""
    url = f"{base}/v1/projects/{task.project_id}/exports/{task.task_id}"
    link = links.for_file(task, f, base) if links else None
    return {
        "name": f.name,
        "kind": f.kind,
        "rows": f.rows,
        "bytes": f.bytes,
        "sha256": f.sha256,
        "media_type": f.media_type,
        "download_url": f"{url}/download" if f.kind == "data" else f"{url}/manifest",
        "url": link.url if link else None,
        "url_expires_at": iso(link.expires_at) if link else None,
        "file_expires_at": iso(task.file_expires_at),
    }


def notification_json(n: Notification) -> dict[str, Any]:
    return {
        "notification_id": n.notification_id,
        "channel": n.channel.value,
        "target": n.target,
        "event": n.event,
        "status": n.status.value,
        "attempts": n.attempts,
        "last_error": n.last_error,
        "next_attempt_at": iso(n.next_attempt_at)
        if n.status is NotificationStatus.PENDING
        else None,
        "create_time": iso(n.create_time),
        "delivered_time": iso(n.delivered_time),
        "attempt_log": n.attempt_log,
    }


def rates(task: Task, now: datetime) -> tuple[float | None, float | None]:
    """Rows per second so far and the seconds left, where they can be known."""
    if task.start_time is None or task.finished_count <= 0:
        return None, None
    end = task.end_time or now
    elapsed = (end - task.start_time).total_seconds()
    if elapsed <= 0:
        return None, None
    rate = task.finished_count / elapsed
    if task.status.is_terminal or not task.total_count:
        return round(rate, 1), None
    left = max(task.total_count - task.finished_count, 0)
    return round(rate, 1), round(left / rate, 1) if rate > 0 else None


FAILED_ROWS_LISTED = 1000  # rows listed in failed_items; failed_count counts them all


def failed_rows(succeeded: list[Partition]) -> list[dict[str, Any]]:
    """The rows that failed inside committed partitions (isolated by bisection): one item
    each, with its key and the database's message, in partition then key order."""
    items = [
        {
            "partition": p.index,
            "key": i.get("key"),
            "error_code": i.get("error_code", "ROW_FAILED"),  # or INVALID_DOCUMENT
            "error_msg": i.get("error_msg"),
        }
        for p in succeeded
        for i in p.failed_items or []
    ]
    return items[:FAILED_ROWS_LISTED]


def success_rate(task: Task, done: int, stopped: int) -> float | None:
    """Percent of the selected items (rows) delivered, once the task has ended with its
    counts (finished_count delivered, failed_count failed); before that, and for a task
    whose counts are unknown, the percent of stopped partitions that succeeded."""
    counted = task.finished_count + task.failed_count
    if task.status.is_terminal and task.failed_count and counted:
        # rounded down: a task with a failed row never shows 100.0
        return math.floor(10000.0 * task.finished_count / counted) / 100
    return round(100.0 * done / stopped, 2) if stopped else None


def task_json(task: Task, base: str = "", links: LinkSigner | None = None) -> dict[str, Any]:
    now = datetime.now(UTC)
    rate, eta = rates(task, now)
    succeeded = [p for p in task.partitions if p.status is PartitionStatus.DONE]
    done = len(succeeded)
    failed = [p for p in task.partitions if p.status is PartitionStatus.FAILED]
    stopped = sum(1 for p in task.partitions if p.status.is_terminal)
    request = task.request
    state = task.stage.as_json()
    body: dict[str, Any] = {
        "task_id": task.task_id,
        "project_id": task.project_id,
        "dataset_id": task.dataset_id,
        "status": task.status.value,
        "task_status": seed002_status(task.status).value,
        "is_terminal": task.status.is_terminal,
        "file_status": task.file_status.value,
        "current_state": state,
        "currentState": current_state(task.stage),
        "format": task.format,
        "columns": task.columns,
        "total_count": task.total_count,
        "total_is_estimate": task.total_is_estimate and task.total_count is not None,
        "finished_count": task.finished_count,
        "failed_count": task.failed_count,
        "progress": round(task.progress, 2),
        "bytes_written": task.bytes_written,
        "rows_per_second": rate,
        "eta_seconds": eta,
        "parallelism": task.parallelism,
        "allow_partial": task.allow_partial,
        "timeout_seconds": task.timeout_seconds,
        "expires_in": task.expires_in,
        "create_time": iso(task.create_time),
        "start_time": iso(task.start_time),
        "update_time": iso(task.update_time),
        "end_time": iso(task.end_time),
        "file_expires_at": iso(task.file_expires_at),
        "error_code": task.error_code,
        "error_msg": task.error_msg,
        "is_download": task.is_download,
        "download_count": task.download_count,
        "retry_after": retry_after_seconds(task, now),
        "success_rate": success_rate(task, done, stopped),
        "successful_items": [{"partition": p.index, "rows": p.finished_count} for p in succeeded],
        "file_name": shown_file_name(task),
        "failed_items": [
            *(
                {"partition": p.index, "error_code": p.error_code, "error_msg": p.error_msg}
                for p in failed
            ),
            *failed_rows(succeeded),
        ],
        "files": [file_json(task, f, base, links) for f in task.files],
        "notifications": [notification_json(n) for n in task.notifications],
        "partitions": [partition_json(p) for p in task.partitions],
        "request": request,
        "consistency": consistency_json(task, now),
        "samples": samples_json(task),
        "kind": task.kind.value,
    }
    if task.status in DISCARDED:  # its parts are deleted: nothing was delivered
        body["successful_items"] = []
        body["success_rate"] = 0.0
    if task.kind is TaskKind.IMPORT:  # items are rows; stages say "import"
        body["failed_items"] = list(task.failed_items or [])
        rows = task.finished_count + task.failed_count
        if task.status.is_terminal and rows:
            body["success_rate"] = round(100.0 * task.finished_count / rows, 2)
        body["current_state"] = import_stage_json(task.stage)
        for p, view in zip(task.partitions, body["partitions"], strict=True):
            view["current_state"] = import_stage_json(p.stage)
    return body


def consistency_json(task: Task, now: datetime) -> dict[str, Any] | None:
    """What the export guarantees (docs/consistency.md), with the source's protection:
    whether partitions wait for a source connection, and the age of the oldest
    transaction the export holds on the source (a snapshot's holder, or the oldest
    running partition's read)."""
    if task.consistency is None:
        return None
    body = dict(task.consistency)
    pending = any(p.status is PartitionStatus.PENDING for p in task.partitions)
    body["waiting_for_source"] = bool(task.waiting_for_source and pending)
    if body["waiting_for_source"] and not task.status.is_terminal:
        body["note"] = "waiting for a source connection (the dataset's max_connections)"
    body["oldest_transaction_age_seconds"] = None
    if not task.status.is_terminal:
        starts = [
            p.start_time
            for p in task.partitions
            if p.status is PartitionStatus.RUNNING and p.start_time is not None
        ]
        snap = body.get("snapshot") or {}
        # a SQLite copy holds no transaction on the source: only its partitions' reads count
        held = snap.get("time") if task.snapshot_id and snap.get("kind") != "sqlite_copy" else None
        if held:
            starts.append(datetime.fromisoformat(held))
        if starts:
            body["oldest_transaction_age_seconds"] = round((now - min(starts)).total_seconds(), 1)
    return body


def samples_json(task: Task) -> dict[str, Any] | None:
    """A samples export's own status: what it selects, its layout and its split (the
    planned train/eval sizes, once the total is known; the manifest has the exported)."""
    spec = task.plan.samples
    if spec is None:
        return None
    split = None
    if spec.ratio_sample_usage:
        n = task.total_count
        train = None if n is None else math.floor(n * spec.train_sample_ratio + 0.5)
        split = {
            "train_sample_ratio": spec.train_sample_ratio,
            "seed": spec.split_seed,
            "train": train,
            "eval": None if n is None or train is None else n - train,
            "folders": ["train/", "eval/"],
        }
    return {
        "export_type": int(spec.export_type),
        "export_format": int(spec.export_format),
        "layout": "tree" if int(spec.export_format) == 1 else "tile",
        "export_dest": spec.export_dest,
        "version_format": spec.version_format,
        "clear_hard_property": spec.clear_hard_property,
        "new_dataset_name": spec.new_dataset_name,
        "split": split,
    }


def import_stage_json(stage: Stage) -> dict[str, Any]:
    return {"status_id": int(stage), "status": IMPORT_STAGE_TEXTS[stage]}


def connection_json(c: Connection, reachable: bool | None = None) -> dict[str, Any]:
    """A connection profile as the administrator sees it: never its URL."""
    return {
        "name": c.name,
        "backend": c.backend,
        "projects": list(c.projects),
        "origin": c.origin,
        "create_time": iso(c.create_time),
        "update_time": iso(c.update_time),
        "reachable": reachable,
    }


def dataset_json(ds: Dataset) -> dict[str, Any]:
    """A dataset as callers see it: never its connection URL."""
    return {
        "dataset_id": ds.dataset_id,
        "project_id": ds.project_id,
        "name": ds.name,
        "kind": ds.kind,
        "table": ds.table,
        "has_query": ds.query is not None,
        "key": ds.key or None,
        "document": ds.options.get("document"),
        "file_format": ds.options.get("file_format"),
        "connection": ds.options.get("connection"),
        "writable": bool(ds.options.get("writable")),
        "fields": [
            {"name": f["name"], "type": f.get("type"), "kind": f.get("kind")} for f in ds.fields
        ],
        "create_time": iso(ds.create_time),
        "max_connections": ds.options.get("max_connections"),
        "statement_timeout_seconds": ds.options.get("statement_timeout_seconds"),
    }
