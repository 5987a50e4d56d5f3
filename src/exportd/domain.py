"""The vocabulary of exportd: lifecycle statuses, stages, file statuses and the records
the store hands out. Every status is an enum member; nothing compares bare strings."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class TaskStatus(enum.StrEnum):
    """Lifecycle of an export task (DESIGN.md, "Status")."""

    PENDING = "PENDING"  # accepted, waiting for a worker
    RUNNING = "RUNNING"  # being executed; see the stage
    CANCELING = "CANCELING"  # cancel requested; workers stop and clean up
    COMPLETED = "COMPLETED"  # every selected object was exported
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"  # partial success, allowed by the request
    FAILED = "FAILED"  # could not complete; error_code says why
    CANCELED = "CANCELED"  # canceled by a user
    TIMEOUT = "TIMEOUT"  # exceeded its time limit

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        TaskStatus.COMPLETED,
        TaskStatus.COMPLETED_WITH_ERRORS,
        TaskStatus.FAILED,
        TaskStatus.CANCELED,
        TaskStatus.TIMEOUT,
    }
)
ACTIVE_STATUSES = frozenset(set(TaskStatus) - TERMINAL_STATUSES)


class PartitionStatus(enum.StrEnum):
    """Lifecycle of one partition (a key range processed under a lease)."""

    PENDING = "PENDING"  # waiting to be claimed (first time, or again after a retry/reclaim)
    RUNNING = "RUNNING"  # claimed under a lease
    WAITING = "WAITING"  # header pass committed; waits for the merged header (stages 40, 50)
    DONE = "DONE"  # its part is committed and will be in the result
    FAILED = "FAILED"  # gave up after its attempts; error_code says why
    CANCELED = "CANCELED"  # the task was canceled or timed out before it finished

    @property
    def is_terminal(self) -> bool:
        return self in (PartitionStatus.DONE, PartitionStatus.FAILED, PartitionStatus.CANCELED)


class PartitionPhase(enum.StrEnum):
    """Which pass over its objects a partition is in. Only documents exported to a flat
    format (CSV) need a header pass: their columns are not known from a schema."""

    HEADERS = "HEADERS"  # collect the flattened keys of its documents (stage 20)
    EXPORT = "EXPORT"  # write its objects into a part (stage 60)


class FileStatus(enum.StrEnum):
    """Lifecycle of a task's output files (DESIGN.md, "File lifecycle")."""

    PREPARING = "PREPARING"  # not yet written
    GENERATED = "GENERATED"  # complete and downloadable
    DELETED = "DELETED"  # expired or deleted
    FAILED = "FAILED"  # generation or upload failed


class NotificationStatus(enum.StrEnum):
    """Delivery of one notification (a webhook call or an email to one address)."""

    PENDING = "PENDING"  # waiting for its (next) attempt
    DELIVERED = "DELIVERED"  # the receiver accepted it (2xx; SMTP accepted)
    FAILED = "FAILED"  # gave up after its attempts; the export's own status is unaffected


class Channel(enum.StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


class Stage(enum.IntEnum):
    """`current_state`: the stage of a task or partition, numbers and texts as seed 000."""

    NOT_STARTED = 0
    GETTING_TOTAL = 10
    CREATING_HEADERS = 20
    MERGING_HEADERS = 30
    WAIT_PARALLEL_HEADERS = 40
    WAIT_MASTER_MERGE = 50
    EXPORTING = 60
    COMPLETING_UPLOAD = 70
    WRITING_MANIFEST = 80
    COMPLETED = 90

    @property
    def text(self) -> str:
        return STAGE_TEXTS[self]

    def as_json(self) -> dict[str, Any]:
        return {"status_id": int(self), "status": self.text}


STAGE_TEXTS: dict[Stage, str] = {
    Stage.NOT_STARTED: "Not started yet...",
    Stage.GETTING_TOTAL: "Getting total...",
    Stage.CREATING_HEADERS: "Creating headers for CSV file...",
    Stage.MERGING_HEADERS: "Merging headers for CSV file...",
    Stage.WAIT_PARALLEL_HEADERS: "Wait till parallel tasks create headers for CSV file ...",
    Stage.WAIT_MASTER_MERGE: "Wait till master task merge all headers for CSV file ...",
    Stage.EXPORTING: "Exporting...",
    Stage.COMPLETING_UPLOAD: "Completing upload",
    Stage.WRITING_MANIFEST: "Writing manifest, preparing urls, sending emails...",
    Stage.COMPLETED: "Completed",
}


class Role(enum.StrEnum):
    """What a project token may do."""

    READER = "reader"  # view and download
    WRITER = "writer"  # also create, cancel and delete exports
    ADMIN = "admin"  # also manage datasets and tokens of its project

    def allows(self, needed: Role) -> bool:
        order = [Role.READER, Role.WRITER, Role.ADMIN]
        return order.index(self) >= order.index(needed)


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
    kind: str
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
    request: dict[str, Any]
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
    partitions: list[Partition] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
