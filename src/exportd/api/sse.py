"""Live progress as server-sent events, served from the store.

Any API process can serve any task: the stream polls the task's `version` column (one
cheap indexed read), and reads the whole task only when the version moved. Changes that
happen between two polls arrive together as one event carrying the newest state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson

from exportd.api.seed_mapping import current_state, seed002_status
from exportd.api.views import import_stage_json, iso, rates, retry_after_seconds
from exportd.model import Stage, Task, TaskKind
from exportd.service import ExportService

RECONNECT_MS = 2000


def snapshot(task: Task) -> dict[str, Any]:
    """The state an event carries: status, stage, counts, rate and ETA, and each
    partition's stage."""
    rate, eta = rates(task, datetime.now(UTC))
    stage_json = import_stage_json if task.kind is TaskKind.IMPORT else Stage.as_json
    return {
        "task_id": task.task_id,
        "status": task.status.value,
        "task_status": seed002_status(task.status).value,
        "is_terminal": task.status.is_terminal,
        "file_status": task.file_status.value,
        "current_state": stage_json(task.stage),
        "currentState": current_state(task.stage),
        "progress": round(task.progress, 2),
        "total_count": task.total_count,
        "total_is_estimate": task.total_is_estimate and task.total_count is not None,
        "finished_count": task.finished_count,
        "failed_count": task.failed_count,
        "bytes_written": task.bytes_written,
        "rows_per_second": rate,
        "eta_seconds": eta,
        "error_code": task.error_code,
        "error_msg": task.error_msg,
        "update_time": iso(task.update_time),
        "retry_after": retry_after_seconds(task),
        "partitions": [
            {
                "index": p.index,
                "status": p.status.value,
                "current_state": stage_json(p.stage),
                "finished_count": p.finished_count,
            }
            for p in task.partitions
        ],
    }


def _stages(snap: dict[str, Any]) -> Any:
    return (snap["current_state"], [(p["status"], p["current_state"]) for p in snap["partitions"]])


def _progress(snap: dict[str, Any]) -> Any:
    keys = ("progress", "total_count", "finished_count", "failed_count", "bytes_written")
    return ([snap[k] for k in keys], [p["finished_count"] for p in snap["partitions"]])


def change_kind(before: dict[str, Any] | None, after: dict[str, Any]) -> str | None:
    """The event name for a change: `status` (the task's or its file's status; also the
    first event), `stage` (the task's or a partition's stage or status), `progress`
    (counts), or None when nothing a watcher cares about changed."""
    if before is None or (before["status"], before["file_status"]) != (
        after["status"],
        after["file_status"],
    ):
        return "status"
    if _stages(before) != _stages(after):
        return "stage"
    if _progress(before) != _progress(after):
        return "progress"
    return None


def format_event(name: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


async def task_events(
    svc: ExportService,
    project_id: str,
    task_id: str,
    poll_seconds: float,
    heartbeat_seconds: float,
) -> AsyncIterator[bytes]:
    """Events until the task is terminal (then `end`), or deleted (`end` too); a comment
    line every `heartbeat_seconds` of silence keeps proxies from closing the stream."""
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    seen: int | None = None
    last: dict[str, Any] | None = None
    quiet = 0.0
    while True:
        version = await anyio.to_thread.run_sync(svc.task_version, project_id, task_id)
        if version is None:
            yield format_event("end", {"task_id": task_id, "reason": "deleted"})
            return
        if version != seen:
            task = await anyio.to_thread.run_sync(svc.get, project_id, task_id)
            seen, snap = task.version, snapshot(task)
            kind = change_kind(last, snap)
            if kind is not None:
                quiet = 0.0
                yield format_event(kind, snap, task.version)
            last = snap
            if task.status.is_terminal:
                yield format_event("end", {"task_id": task_id, "status": task.status.value})
                return
        if quiet >= heartbeat_seconds:
            quiet = 0.0
            yield b": keepalive\n\n"
        await anyio.sleep(poll_seconds)
        quiet += poll_seconds


LONG_POLL_MAX_SECONDS = 60


async def wait_for_change(
    svc: ExportService, project_id: str, task_id: str, seen: int, wait: float, poll: float
) -> None:
    """A long poll: return as soon as the task's version is not `seen` (it changed, or
    it is gone), or after `wait` seconds. One indexed read of the version per `poll`."""
    end = anyio.current_time() + wait
    while (left := end - anyio.current_time()) > 0:
        await anyio.sleep(min(poll, left))
        version = await anyio.to_thread.run_sync(svc.task_version, project_id, task_id)
        if version != seen:
            return
