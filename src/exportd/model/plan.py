"""The typed plan of a task: everything the workers and the coordinator need, decided once
when the request is validated (`service.submit`), stored as JSON beside the request as
given, and read back as the same frozen type. Nothing downstream re-derives it from the
request."""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from exportd.model.samples import SamplesSpec


class TaskKind(enum.StrEnum):
    """What a task does; chooses the plug-in that plans, runs and finishes it."""

    EXPORT = "export"  # a dataset -> files
    SAMPLES = "samples"  # a samples dataset's labelled files -> a tree or tile folder
    IMPORT = "import"  # a file -> a table (seed 001's REPORT action)


class DatasetKind(enum.StrEnum):
    """What a registered dataset is."""

    SQL = "sql"  # a table or query of a database
    DOCUMENTS = "documents"  # JSON documents: a JSON column, or JSON Lines files
    FILES = "files"  # CSV, JSON Lines or Parquet files read through Arrow
    SAMPLES = "samples"  # files (images, texts...) with their labels (model/samples.py)


class DocumentMode(enum.StrEnum):
    """How documents reach the format."""

    NESTED = "nested"  # as they are (JSON Lines, JSON, Parquet keep the nesting)
    PATHS = "paths"  # the projected paths, one column each
    DISCOVER = "discover"  # flattened to a header found by a header pass (flat formats)


class Consistency(enum.StrEnum):
    """Which moment(s) an export's rows are of (docs/consistency.md)."""

    SNAPSHOT = "snapshot"  # one moment for every partition (PostgreSQL snapshot, SQLite copy)
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


class ImportMode(enum.StrEnum):
    """How an import's rows reach its target table (all in one transaction at the end)."""

    APPEND = "append"  # inserted beside the rows already there
    UPSERT = "upsert"  # inserted, or replacing the row of the same key
    REPLACE = "replace"  # the table's contents replaced by the file's rows


class ImportSpec(BaseModel):
    """An import's plan: the source file (a storage key or a local path), how to read it,
    which file column goes to which table column, and how rows are loaded. The error
    report goes to the task's output folder (`ExportPlan.output.prefix`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source_key: str | None = None  # an upload, or an object under the project's root
    source_path: str | None = None  # a file under the source directories
    source_name: str  # the file's own name (seed 001's file_name)
    source_bytes: int = 0
    format: Literal["csv", "tsv", "jsonl", "json", "parquet", "xlsx"]
    compression: Literal["none", "gzip", "zstd"] = "none"
    header: bool = True
    delimiter: str = ","
    quote: str = '"'
    null_values: tuple[str, ...] = ("",)
    date_format: str | None = None
    datetime_format: str | None = None
    timezone: str = "UTC"
    decimal_separator: str = "."
    # table column -> file column (by name, or "#n" the n-th, 0-based); constants apart
    mapping: dict[str, str] = Field(default_factory=dict)
    ignored: tuple[str, ...] = ()  # file columns left out
    constants: dict[str, Any] = Field(default_factory=dict)
    file_columns: tuple[str, ...] = ()  # the header (or given names) as planned
    mode: ImportMode = ImportMode.APPEND
    key: tuple[str, ...] = ()  # unique within the file; upsert's conflict target
    max_errors: int | None = None
    max_error_rate: float | None = None


class ExportPlan(BaseModel):
    """An export's plan. `source_columns` are read from the dataset in output order;
    `filter` is the validated filter (values coerced again by the source's field kinds
    when read, deterministically)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal[TaskKind.EXPORT, TaskKind.IMPORT, TaskKind.SAMPLES] = TaskKind.EXPORT
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
    samples: SamplesSpec | None = None  # a samples export (kind SAMPLES)
    imports: ImportSpec | None = None  # an import's source, reading and loading (kind IMPORT)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportPlan:
        return cls.model_validate(data)
