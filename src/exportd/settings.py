"""Settings, read from `EXPORTD_*` environment variables and passed explicitly everywhere."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")


class ConnectionSetting(BaseModel):
    """A connection profile from the settings (`EXPORTD_CONNECTIONS`): the server
    administrator's database URL and the projects that may register datasets on it."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, description="SQLAlchemy URL (never shown by the API)")
    projects: list[str] = Field(min_length=1, description='project ids, or ["*"] for all')


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXPORTD_", extra="ignore")

    data_dir: Path = Field(default=Path("exportd-data"), description="SQLite file, files, tokens")
    database_url: str | None = Field(default=None, description="store URL; SQLite in data_dir")
    storage_url: str | None = Field(default=None, description="file:// or s3:// for outputs")
    admin_token: str | None = Field(default=None, description="administrator bearer token")
    public_url: str | None = Field(default=None, description="base URL used in links")
    source_dirs: list[Path] = Field(
        default_factory=list,
        description="directories under which `files` and JSON Lines `documents` datasets "
        "may be registered (JSON list); none: such datasets are refused. SQLite sources "
        "must be files under them too, for every caller",
    )
    source_s3_prefixes: list[str] = Field(
        default_factory=list,
        description="S3 prefixes (`s3://bucket/prefix?endpoint_url=...&region=...`, JSON "
        "list) under which the administrator may register `samples` datasets",
    )
    connections: dict[str, ConnectionSetting] = Field(
        default_factory=dict,
        description='connection profiles (JSON): {"name": {"url": ..., "projects": [...]}}; '
        "more can be registered by the administrator with POST /v1/connections",
    )

    workers: int = Field(default=2, ge=0, le=64, description="in-process workers of `serve`")
    worker_processes: bool = Field(
        default=False,
        description="`serve` runs its workers as processes of their own (no interpreter "
        "lock shared with each other or the API) instead of threads; `exportd serve` "
        "turns it on unless told `--worker-threads`",
    )
    lease_seconds: float = Field(default=20.0, gt=0, description="a lease's length")
    shutdown_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="on SIGTERM, how long units of work in hand may still finish before "
        "their leases are handed back",
    )
    heartbeat_seconds: float | None = Field(default=None, description="default: lease/4")
    poll_seconds: float = Field(default=1.0, gt=0, description="safety-net polling interval")
    janitor_seconds: float = Field(default=2.0, gt=0, description="reaper interval")
    max_attempts: int = Field(default=3, ge=1, le=20, description="attempts per partition")
    max_lost: int = Field(
        default=5, ge=0, le=100, description="times a partition's worker may be lost (reclaims)"
    )
    retry_base_seconds: float = Field(default=1.0, ge=0, description="first retry delay")
    batch_size: int = Field(default=5000, ge=1, le=1_000_000, description="rows per fetch")
    default_parallelism: int = Field(default=4, ge=1, le=256)
    max_parallelism: int = Field(default=64, ge=1, le=1024)
    default_expires_in: int = Field(default=7 * 24 * 3600, ge=60)
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="larger bodies: 413")
    events_poll_seconds: float = Field(default=0.5, gt=0, description="SSE store polling")
    events_heartbeat_seconds: float = Field(default=15.0, gt=0, description="SSE keepalive")
    fast_paths: bool = Field(
        default=True, description="use PostgreSQL COPY (CSV) and ADBC (Parquet) where they apply"
    )
    xlsx_sheet_rows: int = Field(
        default=1_048_576, ge=2, le=1_048_576, description="rows per XLSX sheet (Excel's limit)"
    )

    # delivery: links, expiry, abandoned uploads
    link_secret: str | None = Field(default=None, description="HMAC key of signed links")
    link_ttl_seconds: int | None = Field(
        default=None, ge=60, description="signed links' lifetime; default: until the file expires"
    )
    presign_seconds: int = Field(default=900, ge=10, le=7 * 24 * 3600, description="S3 URLs")
    abort_uploads_after: float = Field(
        default=24 * 3600.0, ge=0, description="abort S3 multipart uploads older than this"
    )
    expiry_batch: int = Field(default=100, ge=1, le=10_000, description="files per janitor run")

    # notifications (webhooks and email), delivered from an outbox by the workers
    notify_max_attempts: int = Field(default=8, ge=1, le=50)
    notify_retry_base_seconds: float = Field(default=5.0, ge=0, description="first retry delay")
    notify_retry_max_seconds: float = Field(default=3600.0, ge=0)
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="each step of a call; the whole call: twice this"
    )
    webhook_allow_networks: list[str] = Field(
        default_factory=list,
        description="networks (CIDR) and host names webhooks may reach although they are "
        "not public, for trusted internal receivers (JSON list); none: public addresses only",
    )
    notify_workers: int = Field(
        default=4, ge=1, le=64, description="notification threads of a worker process"
    )
    notify_project_concurrency: int = Field(
        default=2, ge=1, le=64, description="deliveries of one project in flight at once"
    )
    smtp_host: str | None = Field(default=None, description="SMTP server for emails")
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_starttls: bool = Field(default=True, description="upgrade with STARTTLS")
    smtp_ssl: bool = Field(default=False, description="implicit TLS (port 465)")
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = Field(default="exportd@localhost", description="sender address")
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)

    # outages of the store, the storage or a source are ridden out for this long before a
    # unit of work gives up (and then without using up an attempt where it can be redone)
    outage_budget_seconds: float = Field(
        default=120.0, ge=0, description="seconds of store/storage outage ridden out"
    )

    # point-in-time exports of SQLite sources: each task's consistent copy of the database
    # (docs/consistency.md); every worker of a task must see this directory (shared mount)
    snapshot_dir: Path | None = Field(
        default=None,
        description="directory of the consistent copies of SQLite sources (snapshot "
        "exports); default `snapshots` in the data directory. Never a source: it is refused "
        "as one, like the data directory's own files",
    )

    # nothing left behind: the sweeper looks for orphans in the storage now and then
    sweep_seconds: float = Field(
        default=600.0, gt=0, description="interval of the storage sweeper (orphans)"
    )
    sweep_grace_seconds: float = Field(
        default=3600.0,
        ge=1,
        description="age after which the sweeper removes temporary files and the objects "
        "of tasks the store does not know",
    )

    # fault injection for tests: a worker sleeps between uploading a part and committing it
    debug_pause_before_commit: float = Field(default=0.0, ge=0)
    # ... and a coordinator between a task's terminal commit and the deletion of its parts
    debug_pause_after_finish: float = Field(default=0.0, ge=0)
    # ... and a samples export's worker after each sample it copied
    debug_pause_per_sample: float = Field(default=0.0, ge=0)
    # imports: the largest upload, and pauses for fault-injection tests (a worker sleeps
    # after each batch it loads; a coordinator inside its publish, before the commit)
    max_upload_bytes: int = Field(default=10 << 30, ge=1, description="larger uploads: 413")
    import_stream_publish: bool = Field(
        default=True,
        description="an import whose rows are staged as files for PostgreSQL begins its "
        "publish while its partitions run: each file COPYed (in the one target "
        "transaction) once it and every one before it have committed",
    )
    import_staged_files: bool = Field(
        default=True,
        description="imports on the fast path into PostgreSQL stage their rows as files "
        "(COPYed into the target at the publish), not in staging tables",
    )
    import_partition_bytes: int = Field(
        default=8 << 20,
        ge=1 << 16,
        description="an import that names no parallelism of a file that can be split "
        "(uncompressed CSV, TSV, JSON Lines) gets a partition per this many bytes (at least "
        "default_parallelism, at most max_parallelism)",
    )
    import_native_check: bool = Field(
        default=True,
        description="on the fast path, a CSV/TSV import's chunks are checked and written "
        "as COPY text in C (one pass); false: by pyarrow.compute (the same outcome)",
    )
    debug_pause_import_batch: float = Field(default=0.0, ge=0)
    debug_pause_in_publish: float = Field(default=0.0, ge=0)

    # operations: metrics, logs, retention
    metrics_public: bool = Field(
        default=False,
        description="serve the API's /metrics without a token (it names no project); "
        "default: only to the administrator token",
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="`exportd worker`: serve its metrics on this port (0: any free one)",
    )  # fmt: skip
    metrics_addr: str = Field(
        default="127.0.0.1", description="`exportd worker`: the address of its metrics port"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines: text, or one JSON object a line"
    )
    retention_days: float | None = Field(
        default=None, gt=0,
        description="the janitor deletes finished tasks (terminal, files expired or "
        "deleted) that ended more than this many days ago; none: kept",
    )  # fmt: skip
    retention_batch: int = Field(
        default=500, ge=1, le=100_000, description="tasks deleted per janitor run at most"
    )

    @field_validator("webhook_allow_networks")
    @classmethod
    def _networks_or_hosts(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                if not _HOST_NAME.fullmatch(entry.strip()):
                    msg = f"{entry!r} is neither a network (CIDR) nor a host name"
                    raise ValueError(msg) from None
        return entries

    @property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'exportd.db').resolve()}"

    @property
    def snapshot_path(self) -> Path:
        return (self.snapshot_dir or self.data_dir / "snapshots").resolve()

    @property
    def files_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "files").resolve().as_uri()

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds or max(self.lease_seconds / 4, 0.05)
