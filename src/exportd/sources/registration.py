"""What an administrator's dataset registration becomes, per kind: the connection or the
files, the described fields and the options the source needs later. Every check that
can fail happens here, so a bad registration is a 4xx (or a 503 when the source cannot
be reached) and nothing is stored. Which URL a registration may use (a granted
connection profile, or the server administrator's own URL) is decided by the service
before; the connection policy (sources/policy.py) is applied by the source engines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exportd.errors import BadRequest
from exportd.model import DatasetKind
from exportd.model.requests import DatasetRequest
from exportd.sources.paths import check_pattern
from exportd.sources.policy import probe
from exportd.sources.sql import SqlEngines, check_query, describe_sql

DOCUMENT_DIALECTS = ("postgresql", "sqlite")
_PROTECTION = ("max_connections", "statement_timeout_seconds")


@dataclass(frozen=True)
class DatasetSpec:
    url: str
    table: str | None
    query: str | None
    key: str
    fields: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceTarget:
    """Where a database dataset reads: the URL to connect to now, and what the dataset
    keeps (a connection profile's name, or the administrator's own URL)."""

    url: str
    connection: str | None = None

    @property
    def stored_url(self) -> str:
        return "" if self.connection else self.url

    @property
    def options(self) -> dict[str, Any]:
        return {"connection": self.connection} if self.connection else {}


def dataset_spec(
    req: DatasetRequest,
    target: SourceTarget | None,
    engines: SqlEngines,
    roots: list[Path],
    s3_prefixes: Sequence[str] = (),
) -> DatasetSpec:
    """`roots`: the directories a files or JSON Lines dataset's path may be under."""
    if req.kind is DatasetKind.FILES:
        return _files(req, roots, engines)
    if req.kind is DatasetKind.SAMPLES and req.path is not None and req.path.startswith("s3://"):
        return _s3_samples(req, s3_prefixes)
    if req.kind is DatasetKind.SAMPLES:
        return _samples(req, roots, engines)
    if req.kind is DatasetKind.DOCUMENTS and req.path is not None:
        return _jsonl_documents(req, roots, engines)
    if target is None:
        raise BadRequest(
            f"a {req.kind.value} dataset in a database needs a connection", "INVALID_DATASET"
        )
    if req.kind is DatasetKind.DOCUMENTS:
        return _sql_documents(req, target, engines)
    return _sql(req, target, engines)


def _refuse(req: DatasetRequest, names: tuple[str, ...], why: str) -> None:
    given = [n for n in names if getattr(req, n) is not None]
    if given:
        raise BadRequest(f"{', '.join(given)} cannot be given {why}", "INVALID_DATASET")


def _sql_fields(
    req: DatasetRequest, target: SourceTarget, engines: SqlEngines
) -> list[dict[str, Any]]:
    if bool(req.table) == bool(req.query):
        raise BadRequest("give exactly one of table or query", "INVALID_DATASET")
    if req.query:
        check_query(req.query)
    if not req.key and (req.kind is DatasetKind.DOCUMENTS or not req.table):
        raise BadRequest(
            "key (the partitioning column) is required for a query or documents",
            "INVALID_KEY",
        )
    engine = engines.get(target.url, req.max_connections)  # the pool its exports will use
    probe(engine)  # unreachable: the one generic answer; the store: refused
    fields = describe_sql(engine, req.table, req.query)
    if req.key and req.key not in {f["name"] for f in fields}:
        raise BadRequest(f"key column {req.key!r} is not a field of the dataset", "INVALID_KEY")
    return fields


def _sql(req: DatasetRequest, target: SourceTarget, engines: SqlEngines) -> DatasetSpec:
    _refuse(req, ("path", "file_format", "document"), "for a sql dataset")
    fields = _sql_fields(req, target, engines)
    options = {**target.options, **_protection(req)}
    return DatasetSpec(target.stored_url, req.table, req.query, req.key or "", fields, options)


def _sql_documents(req: DatasetRequest, target: SourceTarget, engines: SqlEngines) -> DatasetSpec:
    """Documents in a JSON/JSONB column (PostgreSQL) or a JSON text column (SQLite)."""
    _refuse(req, ("file_format",), "for documents in a database")
    if not req.document:
        raise BadRequest("document (the JSON column) is required", "INVALID_DATASET")
    fields = _sql_fields(req, target, engines)
    assert req.key
    dialect = engines.get(target.url).dialect.name
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
    options = {"document": req.document, **target.options, **_protection(req)}
    return DatasetSpec(target.stored_url, req.table, req.query, req.key, kept, options)


def _protection(req: DatasetRequest) -> dict[str, Any]:
    """The source's protection (docs/consistency.md): connections and statement time."""
    given = {
        "max_connections": req.max_connections,
        "statement_timeout_seconds": req.statement_timeout_seconds,
    }
    return {k: v for k, v in given.items() if v is not None}


def _jsonl_documents(req: DatasetRequest, roots: list[Path], engines: SqlEngines) -> DatasetSpec:
    _refuse(req, ("url", "table", "query", "key", "document", *_PROTECTION), "with path")
    if req.file_format not in (None, "jsonl"):
        raise BadRequest("documents files must be JSON Lines", "INVALID_DATASET")
    assert req.path is not None
    pattern, root, _files = check_pattern(req.path, roots, engines.policy)
    options = {"path": pattern, "root": str(root), **_named(req)}
    return DatasetSpec("", None, None, "", [], options)


def _named(req: DatasetRequest) -> dict[str, Any]:
    """The files connection a dataset was registered through, for its description."""
    return {"connection": req.connection} if req.connection else {}


def _files(req: DatasetRequest, roots: list[Path], engines: SqlEngines) -> DatasetSpec:
    from exportd.sources.files import describe_files, file_format_of  # 50 MB: on demand

    _refuse(req, ("url", "table", "query", "key", "document", *_PROTECTION), "for a files dataset")
    if req.path is None:
        raise BadRequest("path is required for a files dataset", "INVALID_DATASET")
    file_format = file_format_of(req.path, req.file_format)
    pattern, root, files = check_pattern(req.path, roots, engines.policy)
    fields, schema = describe_files(files, file_format)
    options = {
        "path": pattern,
        "root": str(root),
        "file_format": file_format,
        "arrow_schema": schema,
        **_named(req),
    }
    return DatasetSpec("", None, None, "", fields, options)


def _samples(req: DatasetRequest, roots: list[Path], engines: SqlEngines) -> DatasetSpec:
    """Samples: a JSON Lines manifest (one sample a line), or a tree directory whose
    top folders are the labels; under a source directory, away from exportd's data."""
    from exportd.sources.samples import read_manifest, scan_tree

    _refuse(req, ("url", "table", "query", "key", "document", "file_format"), "for samples")
    if req.path is None:
        raise BadRequest("path (a samples manifest or a folder) is required", "INVALID_DATASET")
    path = Path(req.path.rstrip("/") or "/")
    if set("*?[") & set(req.path):
        raise BadRequest("a samples path is a file or folder, not a pattern", "INVALID_PATH")
    tree = path.is_absolute() and path.is_dir()
    _pattern, root, _files = check_pattern(
        f"{path}/**" if tree else str(path), roots, engines.policy
    )
    if tree:
        layout, found = "tree", scan_tree(path)
    elif path.is_file() and path.suffix.lower() in (".jsonl", ".ndjson"):
        layout, found = "manifest", read_manifest(path, root)
    else:
        raise BadRequest(
            "path must be a samples manifest (.jsonl) or a folder of label folders",
            "INVALID_DATASET",
        )
    fields = [{"name": "samples", "type": "samples", "kind": "samples", "count": len(found)}]
    options = {"path": str(path), "root": str(root), "layout": layout, **_named(req)}
    return DatasetSpec("", None, None, "", fields, options)


def _s3_samples(req: DatasetRequest, prefixes: Sequence[str]) -> DatasetSpec:
    """Samples in S3: `s3://bucket/folder/` (a tree) or `s3://bucket/.../x.jsonl` (a
    manifest), under one of the administrator's S3 prefixes (EXPORTD_SOURCE_S3_PREFIXES),
    whose URL gives the endpoint; the dataset keeps that URL and the key under it."""
    from exportd.sources.samples import _load_s3

    _refuse(
        req,
        ("url", "table", "query", "key", "document", "file_format", "connection"),
        "for S3 samples",
    )
    assert req.path is not None
    wanted = urlsplit(req.path)
    if ".." in wanted.path.split("/") or wanted.query:
        raise BadRequest("an S3 samples path is s3://bucket/key, without '..'", "INVALID_PATH")
    for url in prefixes:
        allowed = urlsplit(url)
        prefix = allowed.path.strip("/")
        key = wanted.path.strip("/")
        if allowed.netloc != wanted.netloc or not (
            prefix == "" or key == prefix or key.startswith(prefix + "/")
        ):
            continue
        rel = key[len(prefix) :].strip("/")
        layout = "manifest" if rel.lower().endswith((".jsonl", ".ndjson")) else "tree"
        found = _load_s3(url, rel, layout)
        if not found.samples:
            raise BadRequest("no sample under this S3 path", "INVALID_PATH")
        fields = [
            {"name": "samples", "type": "samples", "kind": "samples", "count": len(found.samples)}
        ]
        options = {"path": rel, "root": "", "layout": layout, "s3": url}
        return DatasetSpec("", None, None, "", fields, options)
    raise BadRequest(
        "the S3 path is not under an S3 source prefix of the server (EXPORTD_SOURCE_S3_PREFIXES)",
        "INVALID_PATH",
    )


def protection_change(
    kind: DatasetKind, options: dict[str, Any], given: dict[str, Any]
) -> dict[str, Any]:
    """A database dataset's options with its protection changed (`given`: the fields of
    the request that were set; None removes one). A 400 for a dataset that reads no
    database (files, samples, JSON Lines documents) or an empty change."""
    if kind in (DatasetKind.FILES, DatasetKind.SAMPLES) or options.get("path"):
        raise BadRequest(
            "max_connections and statement_timeout_seconds protect a database source: "
            "this dataset reads files",
            "INVALID_DATASET",
        )
    if not given:
        raise BadRequest("give max_connections and/or statement_timeout_seconds", "INVALID_REQUEST")
    out = dict(options)
    for name in _PROTECTION:
        if name in given:
            if given[name] is None:
                out.pop(name, None)
            else:
                out[name] = int(given[name])
    return out
