"""The records the store hands out: tasks with their partitions, files and notifications,
datasets and leases."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from exportd.model.plan import DatasetKind, ExportPlan, TaskKind
from exportd.model.status import (
    Channel,
    FileStatus,
    NotificationStatus,
    PartitionPhase,
    PartitionStatus,
    Stage,
    TaskStatus,
)


@dataclass(frozen=True)
class Lease:
    """A claim on a unit of work: who holds it, the fencing token, until when, which attempt."""

    owner: str
    token: str
    expires_at: datetime
    attempt: int


@dataclass
class Dataset:
    dataset_id: str
    project_id: str
    name: str
    kind: DatasetKind
    url: str  # secret: never leaves the server
    table: str | None
    query: str | None
    key: str
    fields: list[dict[str, Any]]
    options: dict[str, Any]
    create_time: datetime


@dataclass
class Partition:
    task_id: str
    index: int
    status: PartitionStatus
    stage: Stage
    bounds: dict[str, Any]
    phase: PartitionPhase = PartitionPhase.EXPORT
    header: dict[str, Any] | None = None  # header pass result: {"keys": [...], "documents": n}
    finished_count: int = 0
    bytes_written: int = 0
    attempts: int = 0  # failed or running tries of the work (a lost worker's is given back)
    lost_count: int = 0  # leases that expired with their worker (killed, host lost)
    lease_owner: str | None = None
    lease_token: str | None = None
    lease_expires_at: datetime | None = None
    not_before: datetime | None = None
    part_key: str | None = None
    part_sha256: str | None = None
    error_code: str | None = None
    error_msg: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime | None = None
    failed_count: int = 0  # rows of a DONE partition that failed (isolated by bisection)
    failed_items: list[dict[str, Any]] | None = None  # the first of them: key, error_msg


@dataclass
class FileRecord:
    task_id: str
    name: str
    key: str
    rows: int
    bytes: int
    sha256: str
    media_type: str
    kind: str = "data"  # data | manifest


@dataclass
class Notification:
    """One notification of a task's terminal status, with its delivery attempts."""

    notification_id: str
    task_id: str
    project_id: str
    channel: Channel
    target: str
    event: str
    status: NotificationStatus
    attempts: int
    attempt_log: list[dict[str, Any]]
    payload: dict[str, Any] | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    create_time: datetime | None = None
    delivered_time: datetime | None = None


@dataclass
class Task:
    task_id: str
    project_id: str
    dataset_id: str
    status: TaskStatus
    stage: Stage
    file_status: FileStatus
    request: dict[str, Any]  # as the caller sent it (seed views show it)
    plan: ExportPlan  # what the workers and the coordinator follow
    format: str
    file_name: str
    columns: list[str]
    parallelism: int
    allow_partial: bool
    max_error_rate: float
    timeout_seconds: int | None
    expires_in: int
    create_time: datetime
    update_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    deadline: datetime | None = None
    file_expires_at: datetime | None = None
    total_count: int | None = None
    total_is_estimate: bool = False
    finished_count: int = 0
    failed_count: int = 0
    bytes_written: int = 0
    progress: float = 0.0
    error_code: str | None = None
    error_msg: str | None = None
    is_download: bool = False
    download_count: int = 0
    idempotency_key: str | None = None
    version: int = 0
    created_by: str | None = None  # id of the token that created it ("admin": the administrator)
    created_by_name: str | None = None  # that token's name
    kind: TaskKind = TaskKind.EXPORT
    # consistency (docs/consistency.md): the snapshot every partition imports now (None:
    # each reads at its own moment), its generation (one more at every fresh snapshot),
    # what was delivered ({"requested", "delivered", "reason", "snapshot": {...}, ...})
    snapshot_id: str | None = None
    snapshot_gen: int = 0
    consistency: dict[str, Any] | None = None
    waiting_for_source: bool = False  # a claim skipped it: its dataset's connections are taken
    # an import's rejected rows (line, column, reason; the first ones, in file order)
    failed_items: list[dict[str, Any]] | None = None
    partitions: list[Partition] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
