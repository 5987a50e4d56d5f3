"""The service's imports: uploads (streamed to storage, with a size limit and their
sha256) and the submission of import tasks, checked against the target table (its real
columns, by reflection) and the file (its header) before anything is created."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from exportd.errors import BadRequest, ExportdError, Forbidden, NotFound
from exportd.formats.readers import ReadError, ReadOptions, plan_file
from exportd.model import Dataset, Task, TaskKind
from exportd.model.plan import DatasetKind, ExportPlan, ImportMode, ImportSpec, OutputSpec
from exportd.model.requests import IMPORT_FORMATS, ImportRequest
from exportd.service import ExportService, NewTask, Principal, _fingerprint
from exportd.settings import Settings
from exportd.sources.policy import SourceNotAllowed
from exportd.sources.targets import Target, ValueRules, full_mapping
from exportd.storage.keys import check_prefix, output_prefix_for, project_root

UPLOAD_ID = re.compile(r"^up_[0-9a-f]{24}$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._()+,=@-]")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".json": "json", ".parquet": "parquet", ".xlsx": "xlsx"}  # fmt: skip
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}


class PayloadTooLarge(ExportdError):
    status_code = 413


@dataclass(frozen=True)
class Upload:
    upload_id: str
    project_id: str
    name: str
    key: str
    bytes: int
    sha256: str
    create_time: str

    def as_json(self) -> dict[str, Any]:
        return {
            "upload_id": self.upload_id, "project_id": self.project_id, "name": self.name,
            "bytes": self.bytes, "sha256": self.sha256, "create_time": self.create_time,
        }  # fmt: skip


def upload_prefix(project_id: str) -> str:
    return f"uploads/{project_id}/"


def safe_name(name: str) -> str:
    """An upload's name as stored: letters, digits and `._()+,=@-` (anything else `_`),
    no leading dot, at most 200 characters; its extension still names the format."""
    cleaned = _NAME_UNSAFE.sub("_", name).lstrip(".")[-200:].lstrip(".")
    return cleaned.replace("..", "_") or "upload"


def guess_format(name: str) -> tuple[str | None, str]:
    """(format, compression) from a file's name: `flights.csv.gz` -> (csv, gzip)."""
    stem, compression = name.lower(), "none"
    for ext, comp in COMPRESSIONS.items():
        if stem.endswith(ext):
            stem, compression = stem[: -len(ext)], comp
    fmt = next((f for ext, f in EXTENSIONS.items() if stem.endswith(ext)), None)
    return fmt, compression


class ImportService:
    def __init__(self, svc: ExportService) -> None:
        self.svc = svc
        self.rt = svc.rt
        self.store = svc.store

    # ---- uploads --------------------------------------------------------------------------

    async def upload(
        self,
        project_id: str,
        name: str,
        chunks: AsyncIterator[bytes],
        run: Callable[..., Awaitable[Any]],
    ) -> Upload:
        """Stream a file to storage (`run` does the blocking writes off the event loop);
        over `max_upload_bytes` it is refused (413) and nothing is kept."""
        name = safe_name(name)
        upload_id = "up_" + uuid.uuid4().hex[:24]
        key = f"{upload_prefix(project_id)}{upload_id}/{name}"
        limit = self.rt.settings.max_upload_bytes
        digest, size = hashlib.sha256(), 0
        ctx = self.rt.storage.open_write(key)
        out: BinaryIO = await run(ctx.__enter__)
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the file is larger than {limit} bytes", "UPLOAD_TOO_LARGE"
                    )
                digest.update(chunk)
                await run(out.write, chunk)
        except BaseException as exc:
            await run(ctx.__exit__, type(exc), exc, exc.__traceback__)
            raise
        await run(ctx.__exit__, None, None, None)
        up = Upload(upload_id, project_id, name, key, size, digest.hexdigest(),
                    datetime.now(UTC).isoformat())  # fmt: skip
        meta = orjson.dumps({**up.as_json(), "key": key})
        await run(self._write, f"{upload_prefix(project_id)}{upload_id}.json", meta)
        return up

    def _write(self, key: str, data: bytes) -> None:
        with self.rt.storage.open_write(key) as out:
            out.write(data)

    def get_upload(self, project_id: str, upload_id: str) -> Upload:
        """An upload of this project (another project's is not found, like a missing one)."""
        key = f"{upload_prefix(project_id)}{upload_id}.json"
        if not UPLOAD_ID.fullmatch(upload_id) or not self.rt.storage.exists(key):
            raise NotFound(f"upload {upload_id[:64]!r} not found", "UPLOAD_NOT_FOUND")
        with self.rt.storage.open_read(key) as f:
            meta = orjson.loads(f.read())
        return Upload(meta["upload_id"], project_id, meta["name"], meta["key"], meta["bytes"],
                      meta["sha256"], meta["create_time"])  # fmt: skip

    # ---- submission -----------------------------------------------------------------------

    def submit(
        self, project_id: str, req: ImportRequest, idempotency_key: str | None, who: Principal
    ) -> tuple[Task, bool]:
        """Check the request against the target and the file, then create the task (202)
        or return the one this idempotency key created."""
        settings = self.rt.settings
        ds = self._writable_dataset(project_id, req.dataset_id)
        target = self._target(ds)
        source_key, source_path, name, size = self._source(project_id, req, who)
        fmt, compression = self._format(req, name)
        spec = self._spec(req, ds, target, fmt, compression, source_key, source_path, name, size)
        parallelism = req.parallelism or default_partitions(settings, fmt, compression, size)
        if parallelism > settings.max_parallelism:
            raise BadRequest(
                f"parallelism may be at most {settings.max_parallelism}", "INVALID_PARALLELISM"
            )
        task_id = uuid.uuid4().hex
        request = req.model_dump(mode="json", exclude_none=True)
        request["dataset_id"] = ds.dataset_id
        prefix = output_prefix_for(
            project_root(project_id, self.store.project_settings(project_id)), "imports", task_id
        )
        plan = ExportPlan(
            kind=TaskKind.IMPORT,
            dataset_id=ds.dataset_id,
            dataset_kind=ds.kind,
            source_columns=tuple(c.name for c in target.columns),
            output=OutputSpec(format="csv", prefix=prefix),
            notify=self.svc._delivery(project_id, _NotifyOnly(req), task_id)[1],  # type: ignore[arg-type]
            fingerprint=_fingerprint(request, [], None),
            imports=spec,
        )
        return self.svc.insert_new_task(
            NewTask(
                task_id=task_id, project_id=project_id, dataset_id=ds.dataset_id,
                request=request, plan=plan, format=fmt, file_name=name,
                columns=list(spec.file_columns), parallelism=parallelism,
                allow_partial=req.allow_partial or req.max_errors is not None
                or req.max_error_rate is not None,
                max_error_rate=req.max_error_rate if req.max_error_rate is not None else 1.0,
                timeout_seconds=req.timeout_seconds,
                expires_in=req.expires_in or settings.default_expires_in,
                kind=TaskKind.IMPORT,
            ),
            idempotency_key, who,
        )  # fmt: skip

    def _writable_dataset(self, project_id: str, dataset_id: str) -> Dataset:
        try:
            ds = self.store.get_dataset(project_id, dataset_id)
        except NotFound:
            raise BadRequest(f"unknown dataset {dataset_id[:100]!r}", "DATASET_NOT_FOUND") from None
        if ds.kind is not DatasetKind.SQL or not ds.table:
            raise BadRequest("imports write into a sql dataset of a table", "INVALID_TARGET")
        if not ds.options.get("writable"):
            raise Forbidden(
                f"dataset {ds.name!r} is not writable: the server administrator registers "
                'import targets with "writable": true',
                "DATASET_NOT_WRITABLE",
            )
        return ds

    def _target(self, ds: Dataset) -> Target:
        engine = self.rt.targets.get(self.rt.connections.dataset_url(ds))
        return Target.reflect(engine, ds.table or "")

    def _source(
        self, project_id: str, req: ImportRequest, who: Principal
    ) -> tuple[str | None, str | None, str, int]:
        """(storage key, local path, file name, bytes) of the file to import."""
        given = [x for x in (req.upload_id, req.path, req.key) if x is not None]
        if len(given) != 1:
            raise BadRequest("give exactly one of upload_id, path and key", "INVALID_SOURCE")
        if req.upload_id is not None:
            try:
                up = self.get_upload(project_id, req.upload_id)
            except NotFound:
                raise BadRequest(f"unknown upload {req.upload_id!r}", "UPLOAD_NOT_FOUND") from None
            return up.key, None, up.name, up.bytes
        if req.key is not None:
            root = project_root(project_id, self.store.project_settings(project_id))
            key = f"{root}/{check_prefix(req.key, 'INVALID_SOURCE')}"
            if not self.rt.storage.exists(key):
                raise BadRequest(f"no object {req.key[:200]!r} in the project", "SOURCE_NOT_FOUND")
            return key, None, key.rsplit("/", 1)[-1][:255], self.rt.storage.size(key)
        path = self._path(project_id, str(req.path), req.connection, who)
        return None, str(path), path.name, path.stat().st_size

    def _path(self, project_id: str, path: str, connection: str | None, who: Principal) -> Path:
        policy = self.rt.policy
        if connection is not None:
            found = self.rt.connections.for_project(connection, project_id)
            if found.directory is None:
                raise BadRequest(f"connection {found.name!r} is not a directory", "INVALID_SOURCE")
            root = policy.check_directory(found.directory)
            full = (root / path).resolve()
            if root not in full.parents:
                raise SourceNotAllowed(
                    "the path leaves the connection's directory", "SOURCE_NOT_ALLOWED"
                )
        elif not who.is_admin:
            raise Forbidden(
                'a project imports a path under a files connection granted to it ("connection")',
                "CONNECTION_REQUIRED",
            )
        else:
            full = Path(path)
        policy.check_sqlite_file(str(full))  # a file under a source directory, not exportd's
        return full.resolve()

    def _format(self, req: ImportRequest, name: str) -> tuple[str, str]:
        guessed, comp = guess_format(name)
        fmt = req.format or guessed
        if fmt not in IMPORT_FORMATS:
            raise BadRequest(
                f"unsupported import format {str(fmt or name)[:40]!r}; use one of "
                f"{', '.join(IMPORT_FORMATS)}",
                "UNSUPPORTED_FORMAT",
            )
        compression = req.compression or comp
        if compression != "none" and fmt in ("parquet", "xlsx"):
            raise BadRequest(f"{fmt} files are compressed inside already", "UNSUPPORTED_FORMAT")
        return fmt, compression

    def _spec(
        self, req: ImportRequest, ds: Dataset, target: Target, fmt: str, compression: str,
        source_key: str | None, source_path: str | None, name: str, size: int,
    ) -> ImportSpec:  # fmt: skip
        table_cols = {c.name for c in target.columns}
        renames: dict[str, str] = {}
        ignored = [f for f, t in (req.mapping or {}).items() if t is None]
        for file_col, table_col in (req.mapping or {}).items():
            if table_col is None:
                continue
            if table_col not in table_cols:
                raise BadRequest(
                    f"mapping: the table has no column {table_col!r}", "UNKNOWN_COLUMN"
                )
            renames[table_col] = file_col
        rules = ValueRules(frozenset(req.null_values), req.date_format, req.datetime_format,
                           req.timezone, req.decimal_separator)  # fmt: skip
        for col, value in (req.constants or {}).items():
            tc = target.column(col)
            if tc is None:
                raise BadRequest(f"constants: the table has no column {col!r}", "UNKNOWN_COLUMN")
            try:
                tc.convert(value, rules)
            except ValueError as exc:
                raise BadRequest(f"constants: {col}: {exc}", "INVALID_CONSTANT") from None
        key = tuple(req.key_columns or target.unique_key(ds.key or None))
        for k in key:
            if k not in table_cols:
                raise BadRequest(f"key_columns: the table has no column {k!r}", "UNKNOWN_COLUMN")
        if req.mode == "upsert" and not key:
            raise BadRequest("upsert needs key_columns (or a table key)", "INVALID_MODE")
        _check_zone(req.timezone)
        delimiter = req.delimiter or ("\t" if fmt == "tsv" else ",")
        opts = ReadOptions(fmt, compression, req.header, delimiter, req.quote)
        file_columns = self._file_columns(source_key, source_path, opts)
        if file_columns and fmt in ("csv", "tsv", "parquet", "xlsx"):
            known = set(file_columns)
            for f in [*renames.values(), *ignored]:
                if f not in known:
                    raise BadRequest(
                        f"mapping: the file has no column {f!r} (it has: "
                        f"{', '.join(file_columns)[:300]})",
                        "UNKNOWN_FILE_COLUMN",
                    )
        full = full_mapping(target, renames, ignored, req.constants or {}, file_columns,
                            req.header or fmt not in ("csv", "tsv", "xlsx"))  # fmt: skip
        if file_columns:
            taken = set(full) | set(req.constants or {})
            missing = [c.name for c in target.columns
                       if c.name not in taken and not c.nullable and not c.has_default]  # fmt: skip
            if missing:
                raise BadRequest(
                    f"no file column goes to the required column {missing[0]!r} (NOT NULL, "
                    "no default): map one, or give a constant",
                    "MISSING_REQUIRED_COLUMN",
                )
        return ImportSpec(
            source_key=source_key, source_path=source_path, source_name=name, source_bytes=size,
            format=fmt, compression=compression, header=req.header,  # type: ignore[arg-type]
            delimiter=delimiter, quote=req.quote, null_values=tuple(req.null_values),
            date_format=req.date_format, datetime_format=req.datetime_format,
            timezone=req.timezone, decimal_separator=req.decimal_separator, mapping=renames,
            ignored=tuple(ignored),
            constants=dict(req.constants or {}), file_columns=tuple(file_columns),
            mode=ImportMode(req.mode), key=key, max_errors=req.max_errors,
            max_error_rate=req.max_error_rate,
        )  # fmt: skip

    def _file_columns(
        self, source_key: str | None, source_path: str | None, opts: ReadOptions
    ) -> list[str]:
        """The header (or Parquet schema) read now, when the file is at hand locally."""
        if opts.format not in ("csv", "tsv", "parquet", "xlsx"):
            return []
        path = Path(source_path) if source_path else self.rt.storage.local_path(source_key or "")
        if path is None:
            return []
        try:
            if opts.format == "parquet":
                return plan_file(path, opts, 1).columns
            from exportd.formats.readers import _header

            return _header(path, opts)[0]
        except ReadError as exc:
            raise BadRequest(f"the file cannot be read: {exc}", "INVALID_FILE") from None
        except (OSError, UnicodeDecodeError, EOFError) as exc:
            raise BadRequest(
                f"the file cannot be read ({type(exc).__name__})", "INVALID_FILE"
            ) from None


def _check_zone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"unknown time zone {name[:60]!r}", "INVALID_TIMEZONE") from None


@dataclass(frozen=True)
class _NotifyOnly:
    """What `ExportService._delivery` reads of a request: its notify and no destination."""

    notify: Any
    destination: Any = None

    def __init__(self, req: ImportRequest) -> None:
        object.__setattr__(self, "notify", req.notify)
        object.__setattr__(self, "destination", None)


def default_partitions(settings: Settings, fmt: str, compression: str, size: int) -> int:
    """An import's partitions when the request names none: the server's default, or more
    for a large file that can be split (one per `import_partition_bytes`, at most the
    server's maximum), so that a file's first rows are checked, and can be published,
    soon after it starts."""
    if not ReadOptions(fmt, compression).splittable:
        return settings.default_parallelism
    by_size = -(-size // settings.import_partition_bytes)
    return max(settings.default_parallelism, min(by_size, settings.max_parallelism))
