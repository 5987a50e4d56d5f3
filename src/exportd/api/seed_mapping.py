"""Native vocabulary -> the vocabularies of the five seed documents, as pure functions.

The seed views (`api/v2.py`) are these functions applied to the same `Task` records the
native API shows; `docs/api-mapping.md` explains every choice made here."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import orjson

from exportd.model import ACTIVE_STATUSES, FileStatus, Stage, Task, TaskKind, TaskStatus
from exportd.model.samples import SamplesSpec

T = TaskStatus
F = FileStatus


# ---- times ------------------------------------------------------------------------------


def seed_time(value: datetime | None) -> str | None:
    """`yyyy-MM-dd'T'HH:mm:ss.SSSZ` (seed 004) in UTC, rendered as in the seed's example:
    millisecond precision and a literal `Z`, e.g. `2022-03-28T00:00:00.000Z`."""
    if value is None:
        return None
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def epoch_ms(value: datetime | None) -> int | None:
    """Milliseconds since the Unix epoch (seed 003's `Long` times)."""
    return None if value is None else int(value.timestamp() * 1000)


# ---- seed 000: currentState -----------------------------------------------------------------


def current_state(stage: Stage) -> dict[str, Any]:
    """`$.currentState` exactly as seed 000's table: `statusId` and `status`."""
    return {"statusId": int(stage), "status": stage.text}


# ---- seed 002: TaskStatusEnum ------------------------------------------------------------------


class Seed002Status(enum.StrEnum):
    """Seed 002's TaskStatusEnum (values only; exportd's own lifecycle is TaskStatus)."""

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"
    SKIPPED = "SKIPPED"
    DRAFT = "DRAFT"
    ACTIVE = "ACTIVE"
    ARCHIVED = "ARCHIVED"
    SUSPENDED = "SUSPENDED"


SEED002_TERMINAL = frozenset(
    {
        Seed002Status.COMPLETED,
        Seed002Status.COMPLETED_WITH_ERRORS,
        Seed002Status.FAILED,
        Seed002Status.CANCELED,
    }
)

_SEED002_OF_NATIVE: dict[TaskStatus, Seed002Status] = {
    T.PENDING: Seed002Status.PENDING,
    T.RUNNING: Seed002Status.IN_PROGRESS,
    T.CANCELING: Seed002Status.IN_PROGRESS,
    T.COMPLETED: Seed002Status.COMPLETED,
    T.COMPLETED_WITH_ERRORS: Seed002Status.COMPLETED_WITH_ERRORS,
    T.FAILED: Seed002Status.FAILED,
    T.CANCELED: Seed002Status.CANCELED,
    T.TIMEOUT: Seed002Status.FAILED,
}


def seed002_status(status: TaskStatus) -> Seed002Status:
    """The TaskStatusEnum value a seed-002 client reads a native status as."""
    return _SEED002_OF_NATIVE[status]


def statuses_for_filter(value: str) -> tuple[TaskStatus, ...]:
    """Native statuses a list filter value selects: a native status selects itself; a
    TaskStatusEnum value that is not native selects the statuses it stands for
    (PROCESSING is "similar to IN_PROGRESS"; the entity-lifecycle values, which an export
    never has, select none)."""
    if value in TaskStatus.__members__:
        return (TaskStatus(value),)
    wanted = Seed002Status(value)
    if wanted is Seed002Status.PROCESSING:
        wanted = Seed002Status.IN_PROGRESS
    return tuple(s for s in TaskStatus if _SEED002_OF_NATIVE[s] is wanted)


def statuses_for_task_status(value: Seed002Status) -> tuple[TaskStatus, ...]:
    """Native statuses whose `task_status` (seed 002's value, `seed002_status`) is
    `value`: exactly the tasks shown with it. PROCESSING, never shown, is read as its
    synonym IN_PROGRESS; the entity-lifecycle values select none."""
    if value is Seed002Status.PROCESSING:
        value = Seed002Status.IN_PROGRESS
    return tuple(s for s in TaskStatus if _SEED002_OF_NATIVE[s] is value)


class StatusFilter(enum.StrEnum):
    """What the native list's `status` filter accepts: every native status, and every
    TaskStatusEnum value of seed 002 (see `statuses_for_filter`)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    CANCELING = "CANCELING"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    TIMEOUT = "TIMEOUT"
    IN_PROGRESS = "IN_PROGRESS"
    PROCESSING = "PROCESSING"
    UNKNOWN = "UNKNOWN"
    SKIPPED = "SKIPPED"
    DRAFT = "DRAFT"
    ACTIVE = "ACTIVE"
    ARCHIVED = "ARCHIVED"
    SUSPENDED = "SUSPENDED"


# ---- seed 004: export task list ----------------------------------------------------------------


class Seed004Status(enum.StrEnum):
    CREATING = "CREATING"
    SUCCESS = "SUCCESS"
    FAIL = "FAIL"
    EXPIRED = "EXPIRED"


_SUCCEEDED = (T.COMPLETED, T.COMPLETED_WITH_ERRORS)
_FAILED = (T.FAILED, T.CANCELED, T.TIMEOUT)
_LIVE_FILES = (F.PREPARING, F.GENERATED, F.FAILED)


# tasks whose output was thrown away (their parts deleted): they delivered no item
DISCARDED = frozenset({TaskStatus.FAILED, TaskStatus.TIMEOUT, TaskStatus.CANCELED})


def shown_file_name(task: Task) -> str:
    """The name of a file the task really wrote: the planned name while none exists (or
    when it is the only one), the first data file's for a split export (`stem-00001.ext`;
    `files` lists them all)."""
    names = [f.name for f in task.files if f.kind == "data"]
    if not names or task.file_name in names:
        return task.file_name
    return names[0]


def seed004_status(status: TaskStatus, file_status: FileStatus) -> Seed004Status:
    """CREATING while it runs; EXPIRED once its files are gone; SUCCESS or FAIL otherwise."""
    if status in ACTIVE_STATUSES:
        return Seed004Status.CREATING
    if file_status is F.DELETED:
        return Seed004Status.EXPIRED
    return Seed004Status.SUCCESS if status in _SUCCEEDED else Seed004Status.FAIL


def seed004_filter(
    value: Seed004Status,
) -> tuple[tuple[TaskStatus, ...], tuple[FileStatus, ...] | None]:
    """(native statuses, file statuses or None for any) selecting exactly the tasks that
    `seed004_status` maps to `value`."""
    if value is Seed004Status.CREATING:
        return tuple(sorted(ACTIVE_STATUSES)), None
    if value is Seed004Status.EXPIRED:
        return (*_SUCCEEDED, *_FAILED), (F.DELETED,)
    return (_SUCCEEDED if value is Seed004Status.SUCCESS else _FAILED), _LIVE_FILES


def seed004_item(task: Task) -> dict[str, Any]:
    """An ExportTaskItem of seed 004 (plus seed 000's currentState)."""
    return {
        "task_id": task.task_id,
        "file_name": shown_file_name(task),
        "status": seed004_status(task.status, task.file_status).value,
        "fail_reason": task.error_msg,
        "error_code": task.error_code,
        "create_time": seed_time(task.create_time),
        "end_time": seed_time(task.end_time),
        "is_download": task.is_download,
        "currentState": current_state(task.stage),
    }


# ---- seed 003: a dataset's export task ---------------------------------------------------------

EXPORT_FORMAT_TILE = 2  # an export of rows: flat files under one directory, never a tree
EXPORT_TYPE_ALL = 2
EXPORT_TYPE_CONDITIONAL = 3


def search_conditions(request: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The request's filter as seed 003's OR-list of conditions (a single condition given
    as an object is the one-element list it means)."""
    raw = request.get("filter")
    if raw is None:
        return None
    return [raw] if isinstance(raw, dict) else list(raw)


def version_format(fmt: str) -> str:
    """Seed 003 knows `Default`, `CarbonData` and `CSV`; exportd's CSV is `CSV`."""
    return "CSV" if fmt == "csv" else "Default"


def ratio_text(ratio: float) -> str:
    """train_sample_ratio as the seed writes it: a String, two decimals ("1.00")."""
    return f"{ratio:.2f}"


def export_params(request: dict[str, Any]) -> dict[str, Any]:
    """Seed 003's ExportParams of an export of rows: to a directory of the project's
    storage (DIR), no split; hard-example attributes, which rows do not have, are
    cleared as the seed's default says."""
    return {
        "clear_hard_property": True,
        "export_dataset_version_format": None,
        "export_dataset_version_name": None,
        "export_dest": "DIR",
        "export_new_dataset_name": None,
        "export_new_dataset_work_path": None,
        "ratio_sample_usage": False,
        "sample_state": "",
        "samples": None,
        "search_conditions": search_conditions(request),
        "train_sample_ratio": "1.00",
    }


def samples_export_params(spec: SamplesSpec) -> dict[str, Any]:
    """Seed 003's ExportParams of a samples export: every field as the task runs it."""
    new = spec.export_dest == "NEW_DATASET"
    return {
        "clear_hard_property": spec.clear_hard_property,
        "export_dataset_version_format": spec.version_format if new else None,
        "export_dataset_version_name": None,  # exportd's datasets have no versions
        "export_dest": spec.export_dest,
        "export_new_dataset_name": spec.new_dataset_name,
        "export_new_dataset_work_path": spec.new_dataset_path,
        "ratio_sample_usage": spec.ratio_sample_usage,
        "sample_state": spec.sample_state,
        "samples": list(spec.samples) if spec.samples is not None else None,
        "search_conditions": [
            c.model_dump(mode="json", exclude_none=True) for c in spec.search_conditions
        ]
        or None,
        "train_sample_ratio": ratio_text(spec.train_sample_ratio),
    }


def output_path(task: Task) -> str:
    """Where the task's files are, relative to the storage (never the storage's URL); a
    NEW_DATASET export's files are in the new dataset's folder."""
    spec = task.plan.samples
    if spec is not None and spec.new_dataset_path:
        return spec.new_dataset_path.rstrip("/") + "/"
    return "/" + task.plan.output.prefix  # the project's root, the destination, the task


def seed003_view(task: Task) -> dict[str, Any]:
    """Seed 003's Table 2 for a task (plus seed 000's currentState)."""
    spec = task.plan.samples
    if spec is not None:
        params = samples_export_params(spec)
        export_format, export_type = int(spec.export_format), int(spec.export_type)
        version: str = spec.version_format
    else:
        conditional = search_conditions(task.request) is not None
        params = export_params(task.request)
        export_format = EXPORT_FORMAT_TILE
        export_type = EXPORT_TYPE_CONDITIONAL if conditional else EXPORT_TYPE_ALL
        version = version_format(task.format)
    return {
        "create_time": epoch_ms(task.create_time),
        "error_code": task.error_code,
        "error_msg": task.error_msg,
        "export_format": export_format,
        "export_params": params,
        "export_type": export_type,
        "finished_sample_count": 0 if task.status in DISCARDED else task.finished_count,
        "path": output_path(task),
        "progress": float(task.progress),
        "status": task.status.value,
        "task_id": task.task_id,
        "total_sample_count": task.total_count,
        "update_time": epoch_ms(task.update_time),
        "version_format": version,
        "version_id": None,
        "currentState": current_state(task.stage),
    }


# ---- seed 001: import/export task status -------------------------------------------------------


class Seed001Status(enum.StrEnum):
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    TIMEOUT = "TIMEOUT"
    FAILED = "FAILED"
    SUCCESS = "SUCCESS"


_SEED001_OF_NATIVE: dict[TaskStatus, Seed001Status] = {
    T.PENDING: Seed001Status.WAITING,
    T.RUNNING: Seed001Status.RUNNING,
    T.CANCELING: Seed001Status.RUNNING,
    T.COMPLETED: Seed001Status.SUCCESS,
    T.COMPLETED_WITH_ERRORS: Seed001Status.SUCCESS,
    T.FAILED: Seed001Status.FAILED,
    T.CANCELED: Seed001Status.FAILED,
    T.TIMEOUT: Seed001Status.TIMEOUT,
}


def seed001_status(status: TaskStatus) -> Seed001Status:
    return _SEED001_OF_NATIVE[status]


def seed001_view(task: Task) -> dict[str, Any]:
    """Seed 001's Table 3 for a task (plus seed 000's currentState)."""
    return {
        "id": task.task_id,
        "resource_id": task.task_id,
        "resource_type": "DATASET",
        "action": seed001_action(task.kind),
        "file_name": shown_file_name(task),
        "start_time": seed_time(task.start_time),
        "end_time": seed_time(task.end_time),
        "status": seed001_status(task.status).value,
        "error_msg": task.error_msg,
        "project_id": task.project_id,
        "domain_id": task.created_by,
        "user_name": task.created_by_name,
        "export_resources": task.dataset_id,
        "import_body": import_body(task),
        "file_status": task.file_status.value,
        "currentState": current_state(task.stage),
    }


SEED001_ACTIONS = {TaskKind.EXPORT: "EXPORT", TaskKind.IMPORT: "REPORT"}
"""Seed 001's `action`: EXPORT, and REPORT for an import (the seed's word)."""

ACTION_FILTERS = {"EXPORT": TaskKind.EXPORT, "REPORT": TaskKind.IMPORT, "IMPORT": TaskKind.IMPORT}
"""What a listing's `action` filter accepts: seed 001's words, and IMPORT for REPORT."""

_SECRET_WORDS = ("secret", "token", "password", "url")


def seed001_action(kind: TaskKind) -> str:
    return SEED001_ACTIONS.get(kind, kind.value.upper())


def import_body(task: Task) -> str:
    """An import's request as submitted, as JSON text, without anything secret-like (a
    webhook URL, a token); blank for an export."""
    if task.kind is not TaskKind.IMPORT:
        return ""
    return orjson.dumps(_without_secrets(task.request)).decode()


def _without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_secrets(v)
            for k, v in value.items()
            if not any(w in str(k).lower() for w in _SECRET_WORDS)
        }
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value
