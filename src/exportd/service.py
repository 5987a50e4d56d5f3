"""The service: submit, get, list, cancel, delete and download exports, and the catalog
operations; used by the HTTP API and, through it, by the CLI."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from exportd.documents.flatten import DEFAULT_ARRAYS, parse_path
from exportd.errors import BadRequest, Conflict, Forbidden, NotFound, SourceError, Unauthorized
from exportd.formats import Column, Format, FormatLimits, get_format, keeps_nesting
from exportd.formats.splitting import Layout
from exportd.model import Dataset, FileRecord, FileStatus, Role, Stage, Task, TaskStatus
from exportd.model.names import FILE_NAME_PATTERN, FORMAT_NAMES
from exportd.model.plan import (
    Consistency,
    DatasetKind,
    DocumentMode,
    ExportPlan,
    NotifyTargets,
    OutputSpec,
    TaskKind,
)
from exportd.model.requests import (
    ConnectionBody,
    DatasetProtectionRequest,
    DatasetRequest,
    ExportRequest,
    FieldSpec,
    ProjectSettingsRequest,
    TokenRequest,
)
from exportd.model.samples import ExportType, SampleExport, SamplesSpec, SampleState
from exportd.runtime import Runtime, filter_fields
from exportd.sources.connections import Connection
from exportd.sources.filters import validate_filter
from exportd.sources.registration import SourceTarget, dataset_spec, protection_change
from exportd.sources.samples import SampleSet, unknown_ids
from exportd.sources.samples import load as load_samples
from exportd.storage.keys import (
    check_prefix,
    check_project_root,
    output_prefix,
    output_prefix_for,
    project_root,
)
from exportd.store import TaskQuery, TokenInfo

_FILE_NAME = re.compile(FILE_NAME_PATTERN)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the administrator (every project) or a project token with a role."""

    project_id: str | None
    role: Role
    token_id: str = "admin"
    name: str | None = "admin"

    @property
    def is_admin(self) -> bool:
        return self.project_id is None


@dataclass(frozen=True)
class Download:
    """A file to hand out: redirect to `redirect`, else stream `path`, else read the key."""

    record: FileRecord
    redirect: str | None
    path: Path | None


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_file_name(name: str) -> str:
    if not _FILE_NAME.fullmatch(name):
        raise BadRequest(
            "file_name must be 1-255 letters, digits, spaces or ._-()+,=@ "
            "with no path separators, no '..' and not 'manifest.json'",
            "INVALID_FILE_NAME",
        )
    return name


@dataclass(frozen=True)
class NewTask:
    """What differs between the kinds' new tasks (exports, samples, imports)."""

    task_id: str
    project_id: str
    dataset_id: str
    request: dict[str, Any]
    plan: ExportPlan
    format: str
    file_name: str
    columns: list[str]
    parallelism: int
    allow_partial: bool
    max_error_rate: float
    timeout_seconds: int | None
    expires_in: int
    kind: TaskKind = TaskKind.EXPORT


class ExportService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.store = rt.store
        self._projects: set[str] = set()  # projects known to exist (none is ever deleted)

    # ---- who is calling -------------------------------------------------------------------

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("missing bearer token", "UNAUTHORIZED")
        if secrets.compare_digest(token.encode(), self.rt.admin_token.encode()):
            return Principal(None, Role.ADMIN)
        found = self.store.find_token(hash_token(token))
        if found is None:
            raise Unauthorized("invalid token", "UNAUTHORIZED")
        now = datetime.now(UTC)
        if found.expired(now):
            raise Unauthorized("this token has expired", "TOKEN_EXPIRED")
        self.store.touch_token(found.token_id, found.last_used_time, now)
        return Principal(found.project_id, found.role, found.token_id, found.name)

    def authorize(self, who: Principal, project_id: str, needed: Role) -> None:
        """Another project's objects are 404, as if they did not exist; too weak a role 403."""
        if who.is_admin:
            if project_id not in self._projects:
                if not self.store.project_exists(project_id):
                    raise NotFound(f"project {project_id!r} not found", "PROJECT_NOT_FOUND")
                self._projects.add(project_id)
            return
        if who.project_id != project_id:
            raise NotFound(f"project {project_id!r} not found", "PROJECT_NOT_FOUND")
        if not who.role.allows(needed):
            raise Forbidden(f"this token's role ({who.role.value}) cannot do this", "FORBIDDEN")

    # ---- catalog --------------------------------------------------------------------------

    def create_project(self, project_id: str) -> dict[str, Any]:
        """The project, and its webhook signing secret: shown this once, never again."""
        secret = new_webhook_secret()
        self.store.create_project(project_id, webhook_secret=secret)
        return {"project_id": project_id, "webhook_secret": secret}

    def project_settings(self, project_id: str) -> dict[str, Any]:
        settings = self.store.project_settings(project_id)
        return {
            "project_id": project_id,
            "storage_prefix": project_root(project_id, settings),
            "notify": settings.get("notify") or {},
            "webhook_secret_set": self.store.webhook_secret(project_id) is not None,
        }

    def set_project_settings(
        self, who: Principal, project_id: str, req: ProjectSettingsRequest
    ) -> dict[str, Any]:
        """Replace the project's settings. Only the server administrator may move the
        project's storage root; a project admin may set the notification defaults."""
        current = self.store.project_settings(project_id)
        settings: dict[str, Any] = {}
        if req.storage_prefix is not None:
            root = check_prefix(req.storage_prefix, "INVALID_STORAGE_PREFIX")
            if root != project_root(project_id, current) and not who.is_admin:
                raise Forbidden("only the server administrator sets storage_prefix", "FORBIDDEN")
            settings["storage_prefix"] = check_project_root(project_id, root)
        elif "storage_prefix" in current and not who.is_admin:
            settings["storage_prefix"] = current["storage_prefix"]
        if req.notify is not None:
            settings["notify"] = req.notify.model_dump(mode="json", exclude_none=True)
        self.store.set_project_settings(project_id, settings)
        return self.project_settings(project_id)

    def rotate_webhook_secret(self, project_id: str) -> dict[str, Any]:
        """A new signing secret for the project's webhooks, shown once."""
        secret = new_webhook_secret()
        self.store.set_webhook_secret(project_id, secret)
        return {"project_id": project_id, "webhook_secret": secret}

    def create_token(self, project_id: str, req: TokenRequest) -> tuple[str, TokenInfo]:
        """A new token and its value: shown this once (the store keeps only its hash)."""
        token = "ext_" + secrets.token_urlsafe(32)
        token_id = uuid.uuid4().hex[:16]
        expires = None
        if req.expires_in is not None:
            expires = datetime.now(UTC) + timedelta(seconds=req.expires_in)
        info = self.store.add_token(
            hash_token(token), token_id, project_id, Role(req.role), req.name, expires
        )
        return token, info

    def list_tokens(self, project_id: str) -> list[TokenInfo]:
        return self.store.list_tokens(project_id)

    def revoke_token(self, project_id: str, token_id: str) -> None:
        self.store.revoke_token(project_id, token_id)

    # ---- connection profiles (server administrator) ---------------------------------------

    def put_connection(
        self, name: str, req: ConnectionBody, replace: bool
    ) -> tuple[Connection, bool, bool]:
        """Create (or replace an existing) profile: (profile, created, reachable now)."""
        return self.rt.connections.put(name, req.url, list(dict.fromkeys(req.projects)), replace)

    def get_connection(self, name: str) -> Connection:
        found = self.rt.connections.get(name)
        if found is None:
            raise NotFound(f"connection {name[:100]!r} not found", "CONNECTION_NOT_FOUND")
        return found

    def list_connections(self, project_id: str | None = None) -> list[Connection]:
        """Every profile, or those granted to one project."""
        c = self.rt.connections
        return c.all() if project_id is None else c.granted(project_id)

    def delete_connection(self, name: str) -> None:
        self.rt.connections.delete(name)

    # ---- datasets -------------------------------------------------------------------------

    def _source_target(
        self, who: Principal, project_id: str, req: DatasetRequest
    ) -> SourceTarget | None:
        """Which database a registration reads. A project token names a connection
        profile granted to its project; only the server administrator may give a URL
        (the connection policy applies to it too)."""
        if req.url is not None and not who.is_admin:
            raise Forbidden(
                "only the server administrator registers a dataset by url; name a "
                'connection granted to the project instead ("connection": ...)',
                "URL_NOT_ALLOWED",
            )
        if req.url is not None and req.connection is not None:
            raise BadRequest("give connection or url, not both", "INVALID_DATASET")
        if req.kind is DatasetKind.FILES or req.path is not None:
            return None  # files: a url is refused with the kind's own error
        if req.connection is not None:
            found = self.rt.connections.for_project(req.connection, project_id)
            if found.directory is not None:
                raise BadRequest(
                    f"connection {found.name!r} is a directory: it serves files datasets",
                    "INVALID_DATASET",
                )
            return SourceTarget(found.url, found.name)
        return SourceTarget(req.url) if req.url is not None else None

    def _file_roots(self, who: Principal, project_id: str, req: DatasetRequest) -> list[Path]:
        """The directories a files (or JSON Lines) dataset may take its path from: a
        files connection granted to the project; the server administrator may also name
        any path under the source directories. The source directories are shared by all
        projects, so a project token must name its own directory."""
        if req.connection is None:
            if not who.is_admin:
                raise Forbidden(
                    "a project's files datasets name a files connection granted to the "
                    'project ("connection": ...); only the server administrator gives any path',
                    "CONNECTION_REQUIRED",
                )
            return list(self.rt.settings.source_dirs)
        found = self.rt.connections.for_project(req.connection, project_id)
        if found.directory is None:
            raise BadRequest(
                f"connection {found.name!r} is a database: a files dataset needs a directory",
                "INVALID_DATASET",
            )
        return [self.rt.policy.check_directory(found.directory)]

    def register_dataset(self, who: Principal, project_id: str, req: DatasetRequest) -> Dataset:
        """Check and describe the dataset; nothing is stored unless every check passes."""
        target = self._source_target(who, project_id, req)
        files = req.kind is DatasetKind.FILES or req.path is not None
        roots = self._file_roots(who, project_id, req) if files else []
        if req.writable and not who.is_admin:
            raise Forbidden("only the server administrator marks a dataset writable", "FORBIDDEN")
        if req.writable and (req.kind is not DatasetKind.SQL or not req.table):
            raise BadRequest("only a sql dataset of a table can be writable", "INVALID_DATASET")
        spec = dataset_spec(
            req, target, self.rt.engines, roots, self.rt.settings.source_s3_prefixes
        )
        ds = Dataset(
            dataset_id="ds_" + uuid.uuid4().hex[:16],
            project_id=project_id,
            name=req.name,
            kind=req.kind,
            url=spec.url,
            table=spec.table,
            query=spec.query,
            key=spec.key,
            fields=spec.fields,
            options={**spec.options, "writable": True} if req.writable else spec.options,
            create_time=datetime.now(UTC),
        )
        self.store.add_dataset(ds)
        return ds

    def get_dataset(self, project_id: str, dataset_id: str) -> Dataset:
        return self.store.get_dataset(project_id, dataset_id)

    def list_datasets(self, project_id: str) -> list[Dataset]:
        return self.store.list_datasets(project_id)

    def change_protection(
        self, project_id: str, dataset_id: str, req: DatasetProtectionRequest
    ) -> Dataset:
        """A database dataset's source protection changed (docs/consistency.md): for the
        partitions claimed afterwards. Nothing changes on a refusal."""
        ds = self.store.get_dataset(project_id, dataset_id)  # by id or name
        given = {name: getattr(req, name) for name in req.model_fields_set}
        self.store.set_dataset_options(
            project_id, ds.dataset_id, lambda options: protection_change(ds.kind, options, given)
        )
        changed = self.store.get_dataset(project_id, ds.dataset_id)
        before = ds.options.get("max_connections")
        if before != changed.options.get("max_connections"):  # this process's old pool
            with contextlib.suppress(SourceError):  # a profile removed: no pool to close
                self.rt.engines.release(self.rt.connections.dataset_url(ds), before)
        return changed

    def delete_dataset(self, project_id: str, dataset_id: str) -> None:
        ds = self.store.get_dataset(project_id, dataset_id)
        self.store.delete_dataset(project_id, ds.dataset_id)

    # ---- exports --------------------------------------------------------------------------

    def submit(
        self,
        project_id: str,
        req: ExportRequest,
        idempotency_key: str | None = None,
        who: Principal | None = None,
    ) -> tuple[Task, bool]:
        """Validate the request against the dataset, then create the task (202) or return
        the task already created with the same idempotency key."""
        settings = self.rt.settings
        try:
            ds = self.store.get_dataset(project_id, req.dataset_id)
        except NotFound:
            raise BadRequest(
                f"unknown dataset {req.dataset_id[:100]!r}", "DATASET_NOT_FOUND"
            ) from None
        if ds.kind is DatasetKind.SAMPLES or req.sample_export is not None:
            return self._submit_samples(project_id, req, ds, idempotency_key, who)
        if req.format not in FORMAT_NAMES:
            raise BadRequest(
                f"unknown format {req.format[:20]!r}; use one of {', '.join(FORMAT_NAMES)}",
                "INVALID_FORMAT",
            )
        fmt = get_format(
            req.format, req.format_options or {}, req.compression,
            FormatLimits(xlsx_sheet_rows=settings.xlsx_sheet_rows),
        )  # fmt: skip
        if ds.kind is DatasetKind.DOCUMENTS:
            source_columns, columns = _document_projection(req.fields)
        else:
            source_columns, columns = _projection(req.fields, ds)
            if req.arrays is not None:
                raise BadRequest("arrays applies to documents datasets only", "INVALID_REQUEST")
        Layout(req.max_rows_per_file, req.max_bytes_per_file).check(
            fmt, [Column(c) for c in columns]
        )
        validate_filter(req.filter, filter_fields(ds))
        parallelism = req.parallelism or settings.default_parallelism
        if parallelism > settings.max_parallelism:
            raise BadRequest(
                f"parallelism may be at most {settings.max_parallelism}", "INVALID_PARALLELISM"
            )
        task_id = uuid.uuid4().hex
        file_name = check_file_name(req.file_name or f"{ds.name}-{task_id[:8]}{fmt.extension}")
        request = req.model_dump(mode="json", by_alias=True, exclude_none=True)
        request["dataset_id"] = ds.dataset_id
        documents = _document_mode(req, fmt) if ds.kind is DatasetKind.DOCUMENTS else None
        if documents is not None:
            request.setdefault("arrays", DEFAULT_ARRAYS)
        prefix, notify = self._delivery(project_id, req, task_id)
        plan = ExportPlan(
            dataset_id=ds.dataset_id,
            dataset_kind=ds.kind,
            source_columns=tuple(source_columns),
            filter=tuple(_filter_list(req.filter)),
            documents=documents,
            arrays=request.get("arrays", DEFAULT_ARRAYS),
            output=OutputSpec(
                format=req.format,
                format_options=req.format_options or {},
                compression=req.compression,
                max_rows_per_file=req.max_rows_per_file,
                max_bytes_per_file=req.max_bytes_per_file,
                prefix=prefix,
            ),
            notify=notify,
            # of the request as given with the dataset's id, not of the task's ids
            fingerprint=_fingerprint(request, source_columns, documents),
            consistency=Consistency(req.consistency) if req.consistency else None,
        )
        return self.insert_new_task(
            NewTask(
                task_id=task_id, project_id=project_id, dataset_id=ds.dataset_id,
                request=request, plan=plan, format=req.format, file_name=file_name,
                columns=columns, parallelism=parallelism, allow_partial=req.allow_partial,
                max_error_rate=req.max_error_rate, timeout_seconds=req.timeout_seconds,
                expires_in=req.expires_in or settings.default_expires_in,
            ),
            idempotency_key, who,
        )  # fmt: skip

    def _submit_samples(
        self,
        project_id: str,
        req: ExportRequest,
        ds: Dataset,
        idempotency_key: str | None,
        who: Principal | None,
    ) -> tuple[Task, bool]:
        """A samples export (seed 003): the request's `sample_export` checked against the
        dataset and fixed as the plan's samples spec (the split seed drawn, the new
        dataset's folder resolved); the other export options do not apply."""
        if ds.kind is not DatasetKind.SAMPLES:
            raise BadRequest("sample_export applies to samples datasets only", "INVALID_REQUEST")
        not_here = sorted(set(req.model_fields_set) & _NOT_FOR_SAMPLES)
        if not_here:
            raise BadRequest(
                f"{', '.join(not_here)} do not apply to a samples export (see sample_export)",
                "INVALID_REQUEST",
            )
        params = req.sample_export or SampleExport()
        task_id = uuid.uuid4().hex
        spec = samples_spec(self.rt, project_id, ds, params, task_id)
        parallelism = req.parallelism or self.rt.settings.default_parallelism
        if parallelism > self.rt.settings.max_parallelism:
            raise BadRequest(
                f"parallelism may be at most {self.rt.settings.max_parallelism}",
                "INVALID_PARALLELISM",
            )
        fmt = "csv" if spec.version_format == "CSV" else "jsonl"
        file_name = check_file_name(req.file_name or f"{ds.name}-{task_id[:8]}.{fmt}")
        request = req.model_dump(mode="json", by_alias=True, exclude_none=True)
        request["dataset_id"] = ds.dataset_id
        request.pop("format", None)
        prefix, notify = self._delivery(project_id, req, task_id)
        plan = ExportPlan(
            kind=TaskKind.SAMPLES,
            dataset_id=ds.dataset_id,
            dataset_kind=ds.kind,
            source_columns=(),
            output=OutputSpec(format=fmt, prefix=prefix),
            notify=notify,
            fingerprint=_fingerprint(request, [], None),
            samples=spec,
        )
        return self.insert_new_task(
            NewTask(
                task_id=task_id, project_id=project_id, dataset_id=ds.dataset_id,
                request=request, plan=plan, format=fmt, file_name=file_name, columns=[],
                parallelism=parallelism,
                # a sample whose file is missing is a failed item: partial success,
                # unless refused
                allow_partial=req.allow_partial if "allow_partial" in req.model_fields_set else True,
                max_error_rate=req.max_error_rate, timeout_seconds=req.timeout_seconds,
                expires_in=req.expires_in or self.rt.settings.default_expires_in,
                kind=TaskKind.SAMPLES,
            ),
            idempotency_key, who,
        )  # fmt: skip

    def insert_new_task(
        self, new: NewTask, idempotency_key: str | None, who: Principal | None
    ) -> tuple[Task, bool]:
        """Store a new PENDING task of any kind, or find the one a repeated
        `Idempotency-Key` made (409 when that one was made by another request)."""
        now = datetime.now(UTC)
        task = Task(
            task_id=new.task_id, project_id=new.project_id, dataset_id=new.dataset_id,
            status=TaskStatus.PENDING, stage=Stage.NOT_STARTED,
            file_status=FileStatus.PREPARING, request=new.request, plan=new.plan,
            format=new.format, file_name=new.file_name, columns=new.columns,
            parallelism=new.parallelism, allow_partial=new.allow_partial,
            max_error_rate=new.max_error_rate, timeout_seconds=new.timeout_seconds,
            expires_in=new.expires_in, create_time=now, update_time=now,
            idempotency_key=idempotency_key,
            created_by=who.token_id if who else None,
            created_by_name=who.name if who else None, kind=new.kind,
        )  # fmt: skip
        stored, created = self.store.insert_task(task)
        if not created and stored.plan.fingerprint != new.plan.fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used with a different request",
                "IDEMPOTENCY_KEY_REUSED",
            )
        return (self.store.get_task(new.project_id, stored.task_id), created)

    def samples(self, project_id: str, dataset_id: str) -> SampleSet:
        """A samples dataset's samples as they are now (404: not a samples dataset)."""
        ds = self.store.get_dataset(project_id, dataset_id)
        if ds.kind is not DatasetKind.SAMPLES:
            raise NotFound(f"dataset {dataset_id[:100]!r} holds no samples", "NOT_SAMPLES")
        return load_samples(ds)

    def _delivery(
        self, project_id: str, req: ExportRequest, task_id: str
    ) -> tuple[str, NotifyTargets]:
        """Fix, at submission, where the files go and whom to notify (the request's own
        `notify` fields override the project's defaults)."""
        settings = self.store.project_settings(project_id)
        dest = req.destination.prefix if req.destination and req.destination.prefix else None
        prefix = output_prefix_for(
            project_root(project_id, settings), check_prefix(dest) if dest else None, task_id
        )
        notify = dict(settings.get("notify") or {})
        if req.notify is not None:
            notify.update(req.notify.model_dump(mode="json", exclude_none=True))
        if notify.get("webhook_url") and self.store.webhook_secret(project_id) is None:
            raise BadRequest(
                "the project has no webhook secret yet: create one with "
                f"POST /v1/projects/{project_id}/webhook-secret",
                "WEBHOOK_SECRET_MISSING",
            )
        targets = NotifyTargets(
            webhook_url=notify.get("webhook_url"), emails=tuple(notify.get("emails") or ())
        )
        return prefix, targets

    def get(self, project_id: str, task_id: str) -> Task:
        return self.store.get_task(project_id, task_id)

    def get_for_dataset(self, project_id: str, dataset_id: str, task_id: str) -> Task:
        """A task of one dataset (seed 003's path): 404 when it belongs to another."""
        ds = self.store.get_dataset(project_id, dataset_id)
        task = self.store.get_task(project_id, task_id)
        if task.dataset_id != ds.dataset_id:
            raise NotFound(f"export task {task_id!r} not found", "TASK_NOT_FOUND")
        return task

    def task_version(self, project_id: str, task_id: str) -> int | None:
        """The task's change counter (None: no such task); cheap enough to poll."""
        return self.store.task_version(project_id, task_id)

    def task_etag(self, project_id: str, task_id: str) -> tuple[str, bool]:
        """A weak entity tag of the task's status body (it changes whenever anything the
        body shows from the store changes), and whether the task is terminal; 404 for no
        such task. Cheap: no body is built."""
        found = self.store.task_stamp(project_id, task_id)
        if found is None:
            raise NotFound(f"export task {task_id!r} not found", "TASK_NOT_FOUND")
        stamp, terminal = found
        digest = hashlib.blake2b(f"{task_id}:{stamp}".encode(), digest_size=12).hexdigest()
        return f'W/"{digest}"', terminal

    def list(self, project_id: str, query: TaskQuery) -> tuple[list[Task], int]:
        """A page of tasks; a `dataset_id` filter may name the dataset, as requests do."""
        if query.dataset_id is not None:
            try:
                ds = self.store.get_dataset(project_id, query.dataset_id)
                query = replace(query, dataset_id=ds.dataset_id)
            except NotFound:
                pass  # no such dataset: the filter matches nothing
        return self.store.list_tasks(project_id, query)

    def cancel(self, project_id: str, task_id: str) -> Task:
        return self.store.request_cancel(project_id, task_id)

    def delete(self, project_id: str, task_id: str) -> None:
        """Delete a finished task, its records and its files (local or S3)."""
        task = self.store.delete_task(project_id, task_id)
        storage = self.rt.storage
        for record in task.files:
            storage.delete(record.key)
        storage.delete_prefix(output_prefix(task))

    def file_for_download(self, project_id: str, task_id: str, name: str | None) -> FileRecord:
        """The file to hand out; the download is recorded (is_download, download_count)."""
        task = self.store.get_task(project_id, task_id)
        if task.file_status is FileStatus.DELETED:
            raise NotFound("the export's files have expired or were deleted", "FILE_DELETED")
        if task.file_status is not FileStatus.GENERATED:
            raise Conflict(
                f"the file is not ready (file_status {task.file_status.value})", "FILE_NOT_READY"
            )
        data = [f for f in task.files if f.kind == "data"]
        if name is None and len(data) > 1:
            raise BadRequest(
                f"this export has {len(data)} files; name one with ?name= (see the manifest)",
                "MULTIPLE_FILES",
            )
        wanted = name or (data[0].name if data else task.file_name)
        record = next((f for f in task.files if f.name == wanted), None)
        if record is None:
            raise NotFound(f"no file {wanted[:100]!r} in this export", "FILE_NOT_FOUND")
        if record.kind == "data":
            self.store.record_download(task_id)
        return record

    def download(self, project_id: str, task_id: str, name: str | None) -> Download:
        """Where the caller gets the bytes: a fresh presigned URL (S3) or a local file."""
        return self._deliver(self.file_for_download(project_id, task_id, name))

    def _deliver(self, record: FileRecord, ttl: int | None = None) -> Download:
        storage = self.rt.storage
        url = storage.presigned_url(
            record.key, ttl or self.rt.settings.presign_seconds, record.name, record.media_type
        )
        return Download(record, url, None if url else storage.local_path(record.key))

    def download_link(
        self,
        project_id: str,
        task_id: str,
        name: str,
        expires: int | None,
        signature: str | None,
    ) -> Download:
        """A signed link followed (no token): 403 unless it is intact and unexpired."""
        left = self.rt.links.check(project_id, task_id, name, expires, signature)
        try:
            record = self.file_for_download(project_id, task_id, name)
        except NotFound as exc:
            if exc.error_code in ("TASK_NOT_FOUND", "FILE_NOT_FOUND"):
                raise Forbidden("this link leads nowhere", "LINK_INVALID") from None
            raise
        return self._deliver(record, min(left, self.rt.settings.presign_seconds))

    def manifest(self, project_id: str, task_id: str) -> bytes:
        record = self.file_for_download(project_id, task_id, "manifest.json")
        with self.rt.storage.open_read(record.key) as fh:
            return fh.read()


_NOT_FOR_SAMPLES = frozenset(
    {"fields", "filter", "format", "format_options", "compression", "max_rows_per_file",
     "max_bytes_per_file", "arrays"}
)  # fmt: skip


def samples_spec(
    rt: Runtime, project_id: str, ds: Dataset, req: SampleExport, task_id: str
) -> SamplesSpec:
    """A samples export's request checked and completed into its plan."""
    conditions = tuple(req.search_conditions or ())
    if (req.export_type is ExportType.SEARCH) != bool(conditions):
        raise BadRequest(
            "search_conditions are given with export_type 3 (conditional search), and only then",
            "INVALID_SEARCH",
        )
    if req.samples is not None:
        missing = unknown_ids(load_samples(ds).samples, req.samples)
        if missing:
            raise BadRequest(
                f"{len(missing)} sample ids are not in the dataset, e.g. {missing[0][:100]!r}",
                "UNKNOWN_SAMPLES",
            )
    new_name, new_path, new_root = _new_dataset(rt, project_id, ds, req)
    return SamplesSpec(
        export_type=req.export_type,
        search_conditions=conditions,
        sample_state=str(
            req.sample_state.value
            if isinstance(req.sample_state, SampleState)
            else req.sample_state
        ),
        samples=tuple(req.samples) if req.samples is not None else None,
        export_format=req.export_format,
        ratio_sample_usage=req.ratio_sample_usage,
        train_sample_ratio=float(req.train_sample_ratio),
        split_seed=req.split_seed if req.split_seed is not None else int(task_id[:15], 16),
        clear_hard_property=req.clear_hard_property,
        version_format=req.version_format,
        export_dest=req.export_dest,
        new_dataset_name=new_name,
        new_dataset_path=new_path,
        new_dataset_root=new_root,
    )


def _new_dataset(
    rt: Runtime, project_id: str, ds: Dataset, req: SampleExport
) -> tuple[str | None, str | None, str | None]:
    """NEW_DATASET: its name (not taken) and its folder: absolute, or relative to the
    source dataset's source directory, and under that directory in either case; new or
    empty, away from exportd's own data."""
    given = req.export_new_dataset_name is not None or req.export_new_dataset_work_path is not None
    if req.export_dest == "DIR":
        if given:
            raise BadRequest(
                "export_new_dataset_name and _work_path go with export_dest NEW_DATASET",
                "INVALID_REQUEST",
            )
        return None, None, None
    name, path = req.export_new_dataset_name, req.export_new_dataset_work_path
    if not name or not path:
        raise BadRequest(
            "NEW_DATASET needs export_new_dataset_name and export_new_dataset_work_path",
            "INVALID_REQUEST",
        )
    try:
        rt.store.get_dataset(project_id, name)
    except NotFound:
        pass
    else:
        raise Conflict(f"dataset {name!r} already exists", "DATASET_EXISTS")
    root = Path(ds.options["root"])
    if ".." in Path(path).parts:
        raise BadRequest("export_new_dataset_work_path must not contain '..'", "INVALID_PATH")
    folder = Path(os.path.realpath(root / path))  # an absolute path replaces the root
    if not (folder == root or root in folder.parents) or folder == root:
        raise BadRequest(
            "export_new_dataset_work_path must be a folder under the dataset's source directory",
            "INVALID_PATH",
        )
    if rt.policy.reaches_own_data(folder) or (
        folder.exists() and (not folder.is_dir() or any(folder.iterdir()))
    ):
        raise BadRequest(
            "export_new_dataset_work_path must be a new or empty folder, away from exportd's data",
            "INVALID_PATH",
        )
    return name, str(folder), str(root)


def _filter_list(raw: list[dict[str, Any]] | dict[str, Any] | None) -> list[dict[str, Any]]:
    """A request's filter as a list of conditions (one condition may be given alone)."""
    if raw is None:
        return []
    return [raw] if isinstance(raw, dict) else list(raw)


def _fingerprint(request: dict[str, Any], source_columns: list[str], documents: Any) -> str:
    """What makes two requests the same: the request as given (with the dataset's id) and
    what was derived from it."""
    derived = {**request, "_source_columns": source_columns}
    if documents is not None:
        derived["_documents"] = str(documents)
    return hashlib.sha256(orjson.dumps(derived, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _document_mode(req: ExportRequest, fmt: Format) -> DocumentMode:
    """How documents reach the format: as-is (`nested`: JSON Lines, JSON, Parquet keep
    the nesting), as the projected paths (`paths`), or flattened to a header found by a
    header pass over every document (`discover`: CSV and the other flat formats)."""
    if req.fields:
        return DocumentMode.PATHS
    return DocumentMode.NESTED if keeps_nesting(fmt) else DocumentMode.DISCOVER


def _document_projection(fields: list[str | FieldSpec] | None) -> tuple[list[str], list[str]]:
    """Projected document paths and their output names; none: decided by the documents."""
    return _pairs(fields, parse_path) if fields else ([], [])


def _projection(fields: list[str | FieldSpec] | None, ds: Dataset) -> tuple[list[str], list[str]]:
    """(source columns, output column names) of a request's `fields`; default: every field."""
    known = [f["name"] for f in ds.fields]
    if not fields:
        return known, list(known)

    def check(name: str) -> None:
        if name not in known:
            raise BadRequest(f"unknown field {name[:100]!r}", "INVALID_FIELD")

    return _pairs(fields, check)


def _pairs(
    fields: list[str | FieldSpec], check: Callable[[str], object]
) -> tuple[list[str], list[str]]:
    """Each projected name checked by `check`, with its output name (renames applied)."""
    source, output = [], []
    for item in fields:
        name, alias = (item, item) if isinstance(item, str) else (item.name, item.as_ or item.name)
        check(name)
        if "\x00" in alias:
            raise BadRequest("a column name cannot hold a NUL character", "INVALID_FIELD")
        source.append(name)
        output.append(alias)
    if len(set(output)) != len(output):
        raise BadRequest("output column names must be unique", "DUPLICATE_COLUMN")
    return source, output
