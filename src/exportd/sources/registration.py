"""What an administrator's dataset registration becomes, per kind: the connection or the
files, the described fields and the options the source needs later. Every check that
can fail happens here, so a bad registration is a 400 and nothing is stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exportd.errors import BadRequest
from exportd.requests import DatasetRequest
from exportd.sources.paths import check_pattern
from exportd.sources.sql import SqlEngines, check_query, describe_sql

DOCUMENT_DIALECTS = ("postgresql", "sqlite")


@dataclass(frozen=True)
class DatasetSpec:
    url: str
    table: str | None
    query: str | None
    key: str
    fields: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)


def dataset_spec(req: DatasetRequest, engines: SqlEngines, source_dirs: list[Path]) -> DatasetSpec:
    if req.kind == "files":
        return _files(req, source_dirs)
    if req.kind == "documents" and req.path is not None:
        return _jsonl_documents(req, source_dirs)
    if req.kind == "documents":
        return _sql_documents(req, engines)
    return _sql(req, engines)


def _refuse(req: DatasetRequest, names: tuple[str, ...], why: str) -> None:
    given = [n for n in names if getattr(req, n) is not None]
    if given:
        raise BadRequest(f"{', '.join(given)} cannot be given {why}", "INVALID_DATASET")


def _sql_fields(req: DatasetRequest, engines: SqlEngines) -> list[dict[str, Any]]:
    if not req.url:
        raise BadRequest(f"a {req.kind} dataset in a database needs url", "INVALID_DATASET")
    if bool(req.table) == bool(req.query):
        raise BadRequest("give exactly one of table or query", "INVALID_DATASET")
    if req.query:
        check_query(req.query)
    if not req.key:
        raise BadRequest("key (the partitioning column) is required", "INVALID_KEY")
    fields = describe_sql(engines.get(req.url), req.table, req.query)
    if req.key not in {f["name"] for f in fields}:
        raise BadRequest(f"key column {req.key!r} is not a field of the dataset", "INVALID_KEY")
    return fields


def _sql(req: DatasetRequest, engines: SqlEngines) -> DatasetSpec:
    _refuse(req, ("path", "file_format", "document"), "for a sql dataset")
    fields = _sql_fields(req, engines)
    assert req.url and req.key
    return DatasetSpec(req.url, req.table, req.query, req.key, fields)


def _sql_documents(req: DatasetRequest, engines: SqlEngines) -> DatasetSpec:
    """Documents in a JSON/JSONB column (PostgreSQL) or a JSON text column (SQLite)."""
    _refuse(req, ("file_format",), "for documents in a database")
    if not req.document:
        raise BadRequest("document (the JSON column) is required", "INVALID_DATASET")
    fields = _sql_fields(req, engines)
    assert req.url and req.key
    dialect = engines.get(req.url).dialect.name
    if dialect not in DOCUMENT_DIALECTS:
        raise BadRequest(
            f"documents are supported in {' and '.join(DOCUMENT_DIALECTS)}, not {dialect}",
            "INVALID_DATASET",
        )
    by_name = {f["name"]: f for f in fields}
    if req.document not in by_name or req.document == req.key:
        raise BadRequest(
            f"document column {req.document!r} is not a field of the dataset (or is the key)",
            "INVALID_DATASET",
        )
    kept = [by_name[req.key], by_name[req.document]]
    return DatasetSpec(req.url, req.table, req.query, req.key, kept, {"document": req.document})


def _jsonl_documents(req: DatasetRequest, source_dirs: list[Path]) -> DatasetSpec:
    _refuse(req, ("url", "table", "query", "key", "document"), "with path")
    if req.file_format not in (None, "jsonl"):
        raise BadRequest("documents files must be JSON Lines", "INVALID_DATASET")
    assert req.path is not None
    pattern, root, _files = check_pattern(req.path, source_dirs)
    return DatasetSpec("", None, None, "", [], {"path": pattern, "root": str(root)})


def _files(req: DatasetRequest, source_dirs: list[Path]) -> DatasetSpec:
    from exportd.sources.files import describe_files, file_format_of  # 50 MB: on demand

    _refuse(req, ("url", "table", "query", "key", "document"), "for a files dataset")
    if req.path is None:
        raise BadRequest("path is required for a files dataset", "INVALID_DATASET")
    file_format = file_format_of(req.path, req.file_format)
    pattern, root, files = check_pattern(req.path, source_dirs)
    fields, schema = describe_files(files, file_format)
    options = {
        "path": pattern,
        "root": str(root),
        "file_format": file_format,
        "arrow_schema": schema,
    }
    return DatasetSpec("", None, None, "", fields, options)
