"""The typed plan of a task: everything the workers and the coordinator need, decided once
when the request is validated (`service.submit`), stored as JSON beside the request as
given, and read back as the same frozen type. Nothing downstream re-derives it from the
request."""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TaskKind(enum.StrEnum):
    """What a task does; chooses the plug-in that plans, runs and finishes it."""

    EXPORT = "export"  # a dataset -> files


class DatasetKind(enum.StrEnum):
    """What a registered dataset is."""

    SQL = "sql"  # a table or query of a database
    DOCUMENTS = "documents"  # JSON documents: a JSON column, or JSON Lines files
    FILES = "files"  # CSV, JSON Lines or Parquet files read through Arrow


class DocumentMode(enum.StrEnum):
    """How documents reach the format."""

    NESTED = "nested"  # as they are (JSON Lines, JSON, Parquet keep the nesting)
    PATHS = "paths"  # the projected paths, one column each
    DISCOVER = "discover"  # flattened to a header found by a header pass (flat formats)


class Consistency(enum.StrEnum):
    """Which moment(s) an export's rows are of (docs/consistency.md)."""

    SNAPSHOT = "snapshot"  # one moment for every partition (PostgreSQL's exported snapshot)
    PER_PARTITION = "per_partition"  # each partition at the moment it reads


class NotifyTargets(BaseModel):
    """Whom to tell at the end (the request's `notify` over the project's defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    webhook_url: str | None = None
    emails: tuple[str, ...] = ()


class OutputSpec(BaseModel):
    """The output: format with its options, compression, file splitting and where it goes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str
    format_options: dict[str, Any] = Field(default_factory=dict)
    compression: Literal["none", "gzip", "zstd"] | None = None
    max_rows_per_file: int | None = None
    max_bytes_per_file: int | None = None
    prefix: str  # the task's output folder: project root / destination / task id /

    @property
    def split(self) -> bool:
        return bool(self.max_rows_per_file or self.max_bytes_per_file)


class ExportPlan(BaseModel):
    """An export's plan. `source_columns` are read from the dataset in output order;
    `filter` is the validated filter (values coerced again by the source's field kinds
    when read, deterministically)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal[TaskKind.EXPORT] = TaskKind.EXPORT
    dataset_id: str
    dataset_kind: DatasetKind
    source_columns: tuple[str, ...]
    filter: tuple[dict[str, dict[str, Any]], ...] = ()
    documents: DocumentMode | None = None
    arrays: Literal["index", "json"] = "json"
    output: OutputSpec
    notify: NotifyTargets = NotifyTargets()
    fingerprint: str  # of the request as given: an Idempotency-Key reused with another -> 409
    # asked for (None: the default, `snapshot` where the database can share one); what was
    # delivered is the task's `consistency` record
    consistency: Consistency | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportPlan:
        return cls.model_validate(data)
