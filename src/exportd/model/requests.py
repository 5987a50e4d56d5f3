"""What callers send: export requests and dataset registrations (validated shapes only;
the checks against a dataset's fields happen in the service)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from exportd.model.names import FILE_NAME_PATTERN, FORMAT_NAMES, PREFIX_PATTERN
from exportd.model.plan import DatasetKind
from exportd.model.samples import SampleExport

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
# free text that is stored or handed to a driver as is: no NUL (PostgreSQL text cannot
# hold one, and drivers refuse it); fields checked by the service name their own errors
NO_NUL = r"^[^\x00]*$"


def checked_by_service(pattern: str) -> dict[str, Any]:
    """A pattern the OpenAPI document states for a field that the service checks itself
    (with the same regular expression), so that a bad value gets its own error code."""
    return {"pattern": pattern}


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
Email = Annotated[
    str,
    StringConstraints(max_length=254, pattern=rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+$"),
]
"""An email address: an RFC 5322 dot-atom local part and a domain of two or more DNS labels
(the whole rule is this pattern, which the OpenAPI document states; whether the address
receives mail is the SMTP server's to say)."""

# no control character and no space of any kind, spelled out: `\s` means different things
# to the OpenAPI document's readers (ECMA: no U+0085) and to the validator (Unicode)
_URL_REST = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
WEBHOOK_URL = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~%!$&'()*+,;=-]+(?::[0-9]{1,5})?"
    rf"(?:[/?#]{_URL_REST}*)?$"
)
"""An http(s) URL with a host (a DNS name or an IPv4 address; no IPv6 literal) and no
credentials, as the OpenAPI document states it."""


class FieldSpec(BaseModel):
    """A projected field, optionally renamed in the output: `{"name": "dep_delay", "as": "delay"}`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Name
    as_: Name | None = Field(default=None, alias="as")


class NotifySpec(BaseModel):
    """Who hears about the end of an export: a webhook and/or email addresses."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(
        default=None,
        max_length=2000,
        pattern=WEBHOOK_URL,
        description="http(s) URL; signed Standard Webhooks POST",
    )
    emails: list[Email] | None = Field(default=None, max_length=20)

    @field_validator("webhook_url")
    @classmethod
    def _http_only(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook_url must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("webhook_url may not carry credentials")
        return url


class Destination(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefix: str | None = Field(
        default=None,
        max_length=400,
        pattern=NO_NUL,
        description="folder under the project's storage root, e.g. `reports/2026-06`",
        json_schema_extra=checked_by_service(PREFIX_PATTERN),
    )


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: Name = Field(pattern=NO_NUL, description="id (or name) of a dataset of the project")
    fields: list[Name | FieldSpec] | None = Field(
        default=None, max_length=2000, description="projection, order and renames; default all"
    )
    filter: list[dict[str, Any]] | dict[str, Any] | None = Field(
        default=None,
        description="conditions combined with OR; each maps fields to operators combined "
        "with AND: eq, ne, in, nin, lt, lte, gt, gte, between, like, is_null",
    )
    format: str = Field(
        default="csv",
        max_length=20,
        description="csv, tsv, jsonl, json, parquet or xlsx",
        json_schema_extra={"enum": list(FORMAT_NAMES)},  # checked by the service: INVALID_FORMAT
    )
    format_options: dict[str, Any] | None = Field(
        default=None,
        description="csv/tsv: delimiter, quote, header, null, line_ending (lf|crlf), bom, "
        "spreadsheet_safe, timezone, datetime_format, date_format; jsonl/json: timezone, "
        "datetime_format, date_format; parquet: compression (zstd|snappy|gzip|lz4|none), "
        "compression_level, row_group_size; xlsx: header, sheet_name, timezone",
    )
    compression: Literal["none", "gzip", "zstd"] | None = Field(
        default=None, description="for the text formats: gzip or zstd (default none)"
    )
    max_rows_per_file: int | None = Field(
        default=None, ge=1, le=10**12, description="split the output: at most this many rows a file"
    )
    max_bytes_per_file: int | None = Field(
        default=None, ge=1024, le=10**13, description="split the output: files of about this size"
    )
    file_name: str | None = Field(
        default=None,
        max_length=255,
        description="output file name: letters, digits, spaces and `._-()+,=@`, no `..`",
        json_schema_extra=checked_by_service(FILE_NAME_PATTERN),
    )
    parallelism: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="partitions; at most the server's EXPORTD_MAX_PARALLELISM (the maximum "
        "this document states)",
    )
    allow_partial: bool = Field(default=False, description="accept COMPLETED_WITH_ERRORS")
    max_error_rate: float = Field(
        default=1.0, ge=0.0, le=1.0, description="with allow_partial: highest failed share"
    )
    timeout_seconds: int | None = Field(
        default=None, ge=1, le=7 * 24 * 3600, description="time limit once started"
    )
    expires_in: int | None = Field(
        default=None, ge=60, le=366 * 24 * 3600, description="seconds the files are kept"
    )
    destination: Destination | None = Field(default=None, description="where the files go")
    notify: NotifySpec | None = Field(
        default=None, description="webhook and emails at the end; overrides project defaults"
    )
    arrays: Literal["index", "json"] | None = Field(
        default=None,
        description="documents flattened to columns (CSV): arrays as indexed columns "
        "(`tags.0`, `tags.1`) or as one cell of JSON text (default json)",
    )
    consistency: Literal["snapshot", "per_partition"] | None = Field(
        default=None,
        description="snapshot: every partition reads one moment of the database "
        "(PostgreSQL's exported snapshot, a consistent copy of a SQLite database; the "
        "default where the database allows it); per_partition: each "
        "partition reads at its own moment. The status says what was delivered",
    )
    sample_export: SampleExport | None = Field(
        default=None,
        description="a samples dataset's export, in seed 003's terms: export_type, "
        "search_conditions, sample_state, samples, export_format (1 tree, 2 tile), "
        "ratio_sample_usage, train_sample_ratio, clear_hard_property, version_format, "
        "export_dest (DIR or NEW_DATASET)",
    )


CONNECTION_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class DatasetRequest(BaseModel):
    """A dataset registration. `sql`: connection + table or query (+ key: optional for a
    table, split by pages or rowid without it). `documents`:
    connection + table or query + key + document (a JSON/JSONB column), or path (JSON
    Lines files). `files`: path (CSV, JSON Lines or Parquet files; file_format when the
    extension does not say). `url` instead of `connection`: the server administrator only."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
    kind: DatasetKind = DatasetKind.SQL
    connection: str | None = Field(
        default=None,
        pattern=CONNECTION_NAME,
        description="a connection profile granted to the project (GET .../connections)",
    )
    url: str | None = Field(
        default=None,
        min_length=1,
        max_length=4000,
        pattern=NO_NUL,
        description="SQLAlchemy URL (kept secret); the server administrator's token only",
    )
    table: str | None = Field(default=None, max_length=400, pattern=NO_NUL)
    query: str | None = Field(default=None, max_length=100_000, pattern=NO_NUL)
    key: Name | None = Field(
        default=None, description="column used to split the dataset into partitions"
    )
    document: Name | None = Field(default=None, description="documents: the JSON column")
    path: str | None = Field(
        default=None,
        max_length=4000,
        pattern=NO_NUL,
        description="files on the server (absolute path or glob, under a source directory)",
    )
    file_format: Literal["csv", "jsonl", "parquet"] | None = Field(default=None)
    max_connections: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="database datasets: most connections its exports hold on the source at "
        "once, across every worker and host (a snapshot's holder counts)",
    )
    statement_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=7 * 24 * 3600,
        description="database datasets: a partition's read is stopped by the source after "
        "this long (PostgreSQL statement_timeout, MariaDB max_statement_time)",
    )
    writable: bool = Field(
        default=False,
        description="sql table: imports may write into it (the server administrator only)",
    )


class DatasetProtectionRequest(BaseModel):
    """A change of a database dataset's source protection (docs/consistency.md), by the
    project's admin: the fields given are set (null removes the limit), the others kept.
    It applies to the partitions claimed afterwards."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    max_connections: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="most connections its exports hold on the source at once, across every "
        "worker and host (a snapshot's holder counts); null: no limit",
    )
    statement_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=7 * 24 * 3600,
        description="a partition's read is stopped by the source after this long; null: none",
    )


class ConnectionBody(BaseModel):
    """A connection profile (server administrator): a database URL, kept server-side and
    never shown again, and the projects that may register datasets on it."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1, max_length=4000, pattern=NO_NUL, description="SQLAlchemy URL (secret)"
    )
    projects: list[
        Annotated[str, StringConstraints(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_-]{0,63})$")]
    ] = Field(min_length=1, max_length=1000, description='project ids, or ["*"] for every project')


class ConnectionRequest(ConnectionBody):
    """A new connection profile, named."""

    name: Annotated[str, StringConstraints(pattern=CONNECTION_NAME)]


class ProjectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["reader", "writer", "admin"] = "writer"
    name: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    expires_in: int | None = Field(
        default=None, ge=1, le=10 * 366 * 24 * 3600, description="seconds until it is refused"
    )


class ProjectSettingsRequest(BaseModel):
    """A project's settings: its storage root (server administrator only) and the
    notification defaults of its exports."""

    model_config = ConfigDict(extra="forbid")

    storage_prefix: str | None = Field(
        default=None,
        max_length=400,
        pattern=NO_NUL,
        description="the project's storage root (server administrator only); not under "
        "`parts/` nor under another project's `exports/`",
        json_schema_extra=checked_by_service(PREFIX_PATTERN),
    )
    notify: NotifySpec | None = None


IMPORT_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "xlsx")


class ImportRequest(BaseModel):
    """An import: a file (an upload, a path under a files connection or the source
    directories, or an object under the project's storage root) into a writable `sql`
    dataset, with its column mapping, reading options and loading mode."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: Name = Field(pattern=NO_NUL, description="id (or name) of a writable sql dataset")
    upload_id: str | None = Field(
        default=None, max_length=64, pattern=NO_NUL, description="POST .../uploads gave it"
    )
    path: str | None = Field(
        default=None,
        max_length=4000,
        pattern=NO_NUL,
        description="a file: relative to `connection` (a files connection of the project), "
        "or (server administrator) an absolute path under a source directory",
    )
    connection: str | None = Field(default=None, pattern=CONNECTION_NAME)
    key: str | None = Field(
        default=None, max_length=1000, pattern=NO_NUL,
        description="an object under the project's storage root",
    )  # fmt: skip
    format: str | None = Field(
        default=None, max_length=20,
        description="csv, tsv, jsonl, json, parquet or xlsx (default: from the file's name)",
    )  # fmt: skip
    compression: Literal["none", "gzip", "zstd"] | None = None
    header: bool = Field(default=True, description="csv/tsv: the first line names the columns")
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)
    quote: str = Field(default='"', min_length=1, max_length=1)
    null_values: list[Annotated[str, StringConstraints(max_length=100)]] = Field(
        default_factory=lambda: [""], max_length=20, description="texts read as NULL"
    )
    date_format: str | None = Field(default=None, max_length=100, pattern=NO_NUL)
    datetime_format: str | None = Field(default=None, max_length=100, pattern=NO_NUL)
    timezone: str = Field(default="UTC", max_length=100, description="of naive timestamps")
    decimal_separator: Literal[".", ","] = "."
    mapping: dict[Name, Name | None] | None = Field(
        default=None,
        description="file column -> table column (a rename), or null (ignored); other file "
        "columns go to the table column of the same name (without a header: `#0`, `#1`...)",
    )
    constants: dict[Name, Any] | None = Field(
        default=None, description="table column -> the value every row gets"
    )
    mode: Literal["append", "upsert", "replace"] = "append"
    key_columns: list[Name] | None = Field(
        default=None, max_length=32,
        description="unique within the file; upsert's key (default: the dataset's key, "
        "else the table's primary key)",
    )  # fmt: skip
    max_errors: int | None = Field(default=None, ge=0, description="rejected rows allowed")
    max_error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    allow_partial: bool = Field(
        default=False, description="without max_errors/max_error_rate: accept rejected rows"
    )
    parallelism: int | None = Field(default=None, ge=1, le=1024)
    timeout_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    expires_in: int | None = Field(default=None, ge=60, le=366 * 24 * 3600)
    notify: NotifySpec | None = None
