"""Response bodies of the native API (`/v1`), so that the OpenAPI document describes every
body exactly. The views in `views.py` build plain dicts; FastAPI checks them against these
models (and a test checks that both list the same fields)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from exportd.api.seed_mapping import Seed002Status
from exportd.model import (
    Channel,
    FileStatus,
    NotificationStatus,
    PartitionPhase,
    PartitionStatus,
    TaskStatus,
)


class ErrorBody(BaseModel):
    """Every error: a stable machine code and a human message."""

    error_code: str = Field(description="stable machine-readable code, e.g. TASK_NOT_FOUND")
    error_msg: str = Field(description="what went wrong, for humans")


class StageView(BaseModel):
    """`current_state`: the stage number and text of seed 000."""

    status_id: int = Field(description="0, 10, ... 90 (seed 000)")
    status: str = Field(description="the stage's text, e.g. 'Exporting...'")


class CurrentState(BaseModel):
    """`currentState` exactly as seed 000 names its fields."""

    statusId: int = Field(description="0, 10, ... 90 (seed 000)")
    status: str = Field(description="the stage's text, e.g. 'Exporting...'")


class PartitionView(BaseModel):
    index: int
    status: PartitionStatus
    phase: PartitionPhase = Field(description="HEADERS (CSV header pass) or EXPORT")
    current_state: StageView
    finished_count: int
    bytes_written: int
    attempts: int = Field(
        description="tries of the work so far, the running one included; a try whose worker "
        "was lost and a store or source outage ridden out do not count (max_attempts)"
    )
    lost_count: int = Field(
        description="leases that expired with their worker (killed, host lost) and were "
        "reclaimed; on their own budget (EXPORTD_MAX_LOST)"
    )
    error_code: str | None
    error_msg: str | None
    start_time: str | None
    end_time: str | None
    update_time: str | None


class FileView(BaseModel):
    name: str
    kind: str = Field(description="data or manifest")
    rows: int
    bytes: int
    sha256: str
    media_type: str
    download_url: str = Field(description="the API route (needs a token)")
    url: str | None = Field(description="a signed link that works without a token")
    url_expires_at: str | None = Field(description="when the signed link stops working")
    file_expires_at: str | None


class NotificationView(BaseModel):
    """One notification of the task's end (a webhook call or an email) and its delivery."""

    notification_id: str
    channel: Channel
    target: str = Field(description="the webhook URL or the email address")
    event: str
    status: NotificationStatus
    attempts: int
    last_error: str | None
    next_attempt_at: str | None
    create_time: str | None
    delivered_time: str | None
    attempt_log: list[dict[str, Any]]


class FailedItem(BaseModel):
    """A partition that failed, with its error (partial success, seed 002); one row that
    failed inside a committed partition (`key` set, error_code ROW_FAILED, the database's
    message); of an import, a rejected row: its line (or Parquet row), the column and the
    reason."""

    partition: int | None = None
    key: Any = Field(default=None, description="the failed row's key (a failed row only)")
    error_code: str | None = None
    error_msg: str | None = None
    line: int | None = Field(default=None, description="imports: the rejected row's line")
    column: str | None = Field(default=None, description="imports: the column at fault")
    reason: str | None = Field(default=None, description="imports: why the row was rejected")


class SucceededItem(BaseModel):
    """A partition whose rows are in the result (partial success, seed 002)."""

    partition: int
    rows: int


class TaskView(BaseModel):
    """The full status of an export task."""

    task_id: str
    project_id: str
    dataset_id: str
    status: TaskStatus
    task_status: Seed002Status = Field(
        description="seed 002's TaskStatusEnum value of `status` (RUNNING and CANCELING: "
        "IN_PROGRESS; TIMEOUT: FAILED); see docs/api-mapping.md"
    )
    is_terminal: bool = Field(description="true once the status can never change again")
    file_status: FileStatus
    current_state: StageView
    currentState: CurrentState = Field(description="the same stage as seed 000 names it")
    format: str
    file_name: str
    columns: list[str]
    total_count: int | None = Field(description="rows to export; may be an estimate or null")
    total_is_estimate: bool
    finished_count: int
    failed_count: int
    progress: float = Field(description="percent, 0-100, never decreasing")
    bytes_written: int
    rows_per_second: float | None
    eta_seconds: float | None
    parallelism: int
    allow_partial: bool
    timeout_seconds: int | None
    expires_in: int
    create_time: str
    start_time: str | None
    update_time: str
    end_time: str | None
    file_expires_at: str | None
    error_code: str | None
    error_msg: str | None
    is_download: bool
    download_count: int
    retry_after: int | None = Field(description="seconds a poller should wait; null once terminal")
    success_rate: float | None = Field(
        description="percent of the selected rows delivered, once ended with failures "
        "(finished_count / (finished_count + failed_count)); else of stopped partitions"
    )
    successful_items: list[SucceededItem]
    failed_items: list[FailedItem]
    files: list[FileView]
    notifications: list[NotificationView]
    partitions: list[PartitionView]
    request: dict[str, Any] = Field(description="the request as given")
    consistency: dict[str, Any] | None = Field(
        default=None,
        description="the guarantee delivered (docs/consistency.md): requested, delivered "
        "(snapshot | per_partition), reason, snapshot (id, time; PostgreSQL wal_lsn, SQLite "
        "copy pages and bytes), "
        "snapshot_restarts, waiting_for_source, oldest_transaction_age_seconds",
    )
    samples: dict[str, Any] | None = Field(
        default=None,
        description="a samples export: export_type, layout, destination and its split "
        "(train_sample_ratio, seed, train and eval sizes)",
    )
    kind: str = Field(default="export", description="export or import")


class TaskList(BaseModel):
    export_tasks: list[TaskView]
    count: int = Field(description="tasks matching the filters, over all pages")


class DatasetField(BaseModel):
    name: str
    type: str | None = Field(description="the source's type name")
    kind: str | None = Field(description="int, float, str, datetime, ...")


class DatasetView(BaseModel):
    """A dataset as callers see it: never its connection URL."""

    dataset_id: str
    project_id: str
    name: str
    kind: str = Field(description="sql, documents or files")
    table: str | None
    has_query: bool
    key: str | None = Field(description="the partition key, when the dataset has one")
    document: str | None = Field(description="documents: the JSON column")
    file_format: str | None = Field(description="files: csv, jsonl or parquet")
    connection: str | None = Field(description="the connection profile the dataset reads")
    writable: bool = Field(default=False, description="imports may write into it")
    fields: list[DatasetField]
    create_time: str
    max_connections: int | None = Field(
        default=None, description="most source connections its exports hold at once"
    )
    statement_timeout_seconds: int | None = Field(
        default=None, description="a partition's read is stopped by the source after this"
    )


class ConnectionView(BaseModel):
    """A connection profile as the administrator sees it: never its URL."""

    name: str
    backend: str = Field(description="sqlite, postgresql, mysql or mariadb")
    projects: list[str] = Field(description='the projects granted to use it ("*": all)')
    origin: str = Field(description="settings (EXPORTD_CONNECTIONS) or api")
    create_time: str | None
    update_time: str | None
    reachable: bool | None = Field(
        default=None, description="on create/replace: whether it answered just now"
    )


class ConnectionList(BaseModel):
    connections: list[ConnectionView]
    count: int


class GrantedConnectionView(BaseModel):
    """A connection profile a project may register datasets on."""

    name: str
    backend: str


class GrantedConnectionList(BaseModel):
    connections: list[GrantedConnectionView]
    count: int


class DatasetList(BaseModel):
    datasets: list[DatasetView]
    count: int


class ProjectView(BaseModel):
    """A new project, and its webhook signing secret: shown this once."""

    project_id: str
    webhook_secret: str


class ProjectSettingsView(BaseModel):
    project_id: str
    storage_prefix: str = Field(description="the storage root of the project's exports")
    notify: dict[str, Any] = Field(description="notification defaults of its exports")
    webhook_secret_set: bool


class WebhookSecretView(BaseModel):
    """A new webhook signing secret: shown only in this answer."""

    project_id: str
    webhook_secret: str


class TokenInfoView(BaseModel):
    """A project token as listed: never the token itself."""

    token_id: str
    project_id: str
    name: str | None
    role: str
    create_time: str | None
    expires_time: str | None = Field(description="refused from then on; null: never expires")
    last_used_time: str | None = Field(description="last accepted (to the minute)")
    expired: bool


class TokenView(TokenInfoView):
    """A new token: shown once, stored only as a hash."""

    token: str


class TokenList(BaseModel):
    tokens: list[TokenInfoView]
    count: int
