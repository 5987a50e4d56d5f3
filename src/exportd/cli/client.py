"""A Python client for exportd's native API: `Client` (blocking) and `AsyncClient` (asyncio
or trio, through anyio), both built on `BaseClient`, which describes every request and
parses every response once, as httpx's own `Client` and `AsyncClient` share `BaseClient`.
The two subclasses only send: the same `Call`, through `httpx.Client` or
`httpx.AsyncClient`, with the same retry rule.

Retries: a refused or timed-out connection is tried again for any request (it never
reached the server); a dropped connection or a 5xx answer only for requests that are safe
to repeat (GET, DELETE, and a POST carrying an Idempotency-Key); never a 4xx. The delays
follow `exportd.retrying.backoff` (0.5 s doubling to 8 s, or the server's `Retry-After`)
for at most `retry_seconds`.

`wait()` follows a task live over its server-sent events (`GET .../events`) and, when the
stream cannot be had or breaks, long-polls (`GET .../exports/{id}?wait=20&since=version`,
answered as soon as the task changes), or, against a server that does not long-poll,
polls as the server says (`Retry-After`: 1 s doubling to 30 s)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import httpx
import orjson
from httpx_sse import EventSource, SSEError

from exportd.retrying import backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

TERMINAL = frozenset({"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELED", "TIMEOUT"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "DELETE", "PUT"})
RETRY_STATUSES = frozenset({500, 502, 503, 504})
POLL_BASE, POLL_CAP = 1.0, 30.0
LONG_POLL_SECONDS = 20.0  # a long poll's `wait` (the server allows up to 60)
RETRY_BASE, RETRY_CAP = 0.5, 8.0


# ---- errors --------------------------------------------------------------------------------


class ExportdError(Exception):
    """Anything that went wrong talking to exportd."""


class ServerUnreachable(ExportdError):
    """No connection to the server could be made (or kept) within the retry budget."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach exportd at {url}: {reason}")
        self.url = url
        self.reason = reason


class ApiError(ExportdError):
    """The server answered with an error: its HTTP status and `{"error_code", "error_msg"}`."""

    def __init__(self, status: int, error_code: str, error_msg: str) -> None:
        super().__init__(f"{status} {error_code}: {error_msg}")
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg


class RequestRefused(ApiError):
    """A 4xx: the request itself was refused (never retried)."""


class BadRequest(RequestRefused):
    """400: bad input; nothing was changed."""


class Unauthorized(RequestRefused):
    """401: no token, an unknown one, or one that expired or was revoked."""


class Forbidden(RequestRefused):
    """403: the token's role does not allow this."""


class NotFound(RequestRefused):
    """404: no such object (also another project's objects)."""


class Conflict(RequestRefused):
    """409: the object is not in a state that allows this (or already exists)."""


class ServerError(ApiError):
    """A 5xx still failing after the retries."""


class WaitTimeout(ExportdError, TimeoutError):
    """`wait(timeout=...)` ran out before the task ended."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}


def error_for(status: int, body: bytes) -> ApiError:
    """The exception for an error response: its class by status, its code and message
    from the body (or the status alone when the body is not exportd's JSON)."""
    code, msg = "HTTP_ERROR", body[:200].decode("utf-8", "replace") or f"HTTP {status}"
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        code = str(data.get("error_code") or code)
        msg = str(data.get("error_msg") or msg)
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else RequestRefused)
    return cls(status, code, msg)


# ---- typed results -------------------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Stage:
    """A stage (seed 000): its number and text, e.g. 60 "Exporting..."."""

    status_id: int
    status: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Stage:
        data = data or {}
        return cls(int(data.get("status_id", 0)), str(data.get("status", "")))


@dataclass(frozen=True)
class FileInfo:
    """An output file (`kind` "data") or the manifest (`kind` "manifest")."""

    name: str
    kind: str
    rows: int | None
    bytes: int | None
    sha256: str | None
    media_type: str | None
    download_url: str | None
    url: str | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FileInfo:
        return cls(
            d["name"], d.get("kind", "data"), d.get("rows"), d.get("bytes"), d.get("sha256"),
            d.get("media_type"), d.get("download_url"), d.get("url"),
        )  # fmt: skip


@dataclass(frozen=True)
class PartitionInfo:
    """One partition of a task: its status, stage, rows and attempts."""

    index: int
    status: str
    stage: Stage
    finished_count: int
    attempts: int | None
    error_code: str | None
    error_msg: str | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PartitionInfo:
        return cls(
            int(d["index"]), d["status"], Stage.from_json(d.get("current_state")),
            int(d.get("finished_count") or 0), d.get("attempts"), d.get("error_code"),
            d.get("error_msg"),
        )  # fmt: skip


@dataclass(frozen=True)
class Task:
    """An export task as the API shows it. Built from the full status (`GET`) or from a
    live event (then `event` names it and the fields the event does not carry are
    empty); `raw` is the JSON it came from."""

    task_id: str
    status: str
    stage: Stage
    file_status: str | None
    file_name: str | None
    total_count: int | None
    total_is_estimate: bool
    finished_count: int
    failed_count: int
    progress: float
    bytes_written: int
    rows_per_second: float | None
    eta_seconds: float | None
    retry_after: int | None
    error_code: str | None
    error_msg: str | None
    create_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    files: list[FileInfo]
    partitions: list[PartitionInfo]
    raw: dict[str, Any] = field(repr=False)
    event: str | None = None
    version: int | None = None  # the `X-Task-Version` of a GET (long polls ask past it)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def data_files(self) -> list[FileInfo]:
        return [f for f in self.files if f.kind == "data"]

    @classmethod
    def from_json(cls, d: Mapping[str, Any], event: str | None = None) -> Task:
        return cls(
            task_id=d["task_id"],
            status=d["status"],
            stage=Stage.from_json(d.get("current_state")),
            file_status=d.get("file_status"),
            file_name=d.get("file_name"),
            total_count=d.get("total_count"),
            total_is_estimate=bool(d.get("total_is_estimate")),
            finished_count=int(d.get("finished_count") or 0),
            failed_count=int(d.get("failed_count") or 0),
            progress=float(d.get("progress") or 0.0),
            bytes_written=int(d.get("bytes_written") or 0),
            rows_per_second=d.get("rows_per_second"),
            eta_seconds=d.get("eta_seconds"),
            retry_after=d.get("retry_after"),
            error_code=d.get("error_code"),
            error_msg=d.get("error_msg"),
            create_time=_time(d.get("create_time")),
            start_time=_time(d.get("start_time")),
            end_time=_time(d.get("end_time")),
            files=[FileInfo.from_json(f) for f in d.get("files") or ()],
            partitions=[PartitionInfo.from_json(p) for p in d.get("partitions") or ()],
            raw=dict(d),
            event=event,
        )


@dataclass(frozen=True)
class TaskPage:
    """One page of `list_exports`: the tasks and how many match in all."""

    tasks: list[Task]
    count: int


@dataclass(frozen=True)
class DatasetField:
    name: str
    type: str | None
    kind: str | None


@dataclass(frozen=True)
class Dataset:
    """A registered dataset (never its connection URL)."""

    dataset_id: str
    name: str
    kind: str
    key: str | None
    table: str | None
    fields: list[DatasetField]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Dataset:
        fields = [DatasetField(f["name"], f.get("type"), f.get("kind")) for f in d["fields"]]
        return cls(
            d["dataset_id"], d["name"], d["kind"], d.get("key"), d.get("table"), fields, dict(d)
        )


@dataclass(frozen=True)
class ConnectionInfo:
    """A connection profile (server administrator): never its URL."""

    name: str
    backend: str
    projects: list[str]
    origin: str | None
    reachable: bool | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ConnectionInfo:
        return cls(
            d["name"], d["backend"], list(d["projects"]), d.get("origin"), d.get("reachable"),
            dict(d),
        )  # fmt: skip


@dataclass(frozen=True)
class TokenInfo:
    """A project token. `token` is set only in the answer that created it."""

    token_id: str
    project_id: str
    role: str
    name: str | None
    create_time: datetime | None
    expires_time: datetime | None
    last_used_time: datetime | None
    expired: bool
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TokenInfo:
        return cls(
            d["token_id"], d["project_id"], d["role"], d.get("name"),
            _time(d.get("create_time")), _time(d.get("expires_time")),
            _time(d.get("last_used_time")), bool(d.get("expired")), d.get("token"),
        )  # fmt: skip


# ---- requests, described once --------------------------------------------------------------


def _json(r: httpx.Response) -> Any:
    return orjson.loads(r.content) if r.content else None


def _none(_: httpx.Response) -> None:
    return None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer: what `Client` and `AsyncClient` send."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def safe_to_repeat(self) -> bool:
        """Whether sending it twice does no harm (so a 5xx or a dropped connection may be
        tried again)."""
        return self.method in IDEMPOTENT_METHODS or "Idempotency-Key" in self.headers


def _field_spec(f: str | Mapping[str, str] | tuple[str, str]) -> str | dict[str, str]:
    if isinstance(f, tuple):
        return {"name": f[0], "as": f[1]}
    return f if isinstance(f, str) else dict(f)


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class BaseClient:
    """What both clients share: the server's address and token, the requests of every
    endpoint (`Call`s), the reading of answers, and the retry and polling rules."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retry_seconds: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry_seconds = retry_seconds
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))

    # -- projects and tokens

    def _create_project(self, project_id: str) -> Call[dict[str, Any]]:
        return Call("POST", "/v1/projects", _json, json={"project_id": project_id})

    def _create_token(
        self, project_id: str, role: str, name: str | None, expires_in: int | None
    ) -> Call[TokenInfo]:
        body = _drop_none({"role": role, "name": name, "expires_in": expires_in})
        return Call("POST", f"/v1/projects/{project_id}/tokens", self._token, json=body)

    def _list_tokens(self, project_id: str) -> Call[list[TokenInfo]]:
        return Call("GET", f"/v1/projects/{project_id}/tokens", self._tokens)

    def _revoke_token(self, project_id: str, token_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/projects/{project_id}/tokens/{token_id}", _none)

    # -- connection profiles (server administrator)

    def _add_connection(self, name: str, url: str, projects: list[str]) -> Call[ConnectionInfo]:
        body = {"name": name, "url": url, "projects": projects}
        return Call("POST", "/v1/connections", self._connection, json=body)

    def _list_connections(self) -> Call[list[ConnectionInfo]]:
        return Call("GET", "/v1/connections", self._connections)

    def _delete_connection(self, name: str) -> Call[None]:
        return Call("DELETE", f"/v1/connections/{name}", _none)

    # -- datasets

    def _add_dataset(self, project_id: str, body: Mapping[str, Any]) -> Call[Dataset]:
        path = f"/v1/projects/{project_id}/datasets"
        return Call("POST", path, self._dataset, json=_drop_none(body))

    def _list_datasets(self, project_id: str) -> Call[list[Dataset]]:
        return Call("GET", f"/v1/projects/{project_id}/datasets", self._datasets)

    # -- exports

    def _create_export(
        self,
        project_id: str,
        dataset_id: str,
        fields: Sequence[str | Mapping[str, str] | tuple[str, str]] | None,
        idempotency_key: str | None,
        options: Mapping[str, Any],
    ) -> Call[Task]:
        body: dict[str, Any] = {"dataset_id": dataset_id, **_drop_none(options)}
        if fields is not None:
            body["fields"] = [_field_spec(f) for f in fields]
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        path = f"/v1/projects/{project_id}/exports"
        return Call("POST", path, self._task, json=body, headers=headers)

    def _create_import(
        self,
        project_id: str,
        dataset_id: str,
        idempotency_key: str | None,
        options: Mapping[str, Any],
    ) -> Call[Task]:
        body: dict[str, Any] = {"dataset_id": dataset_id, **_drop_none(options)}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        path = f"/v1/projects/{project_id}/imports"
        return Call("POST", path, self._task, json=body, headers=headers)

    def _get_export(self, project_id: str, task_id: str) -> Call[Task]:
        return Call("GET", self._task_path(project_id, task_id), self._task)

    def _long_poll(
        self, project_id: str, task_id: str, since: int | None, wait: float
    ) -> Call[Task]:
        """The task once it changed past version `since`, or after `wait` seconds."""
        params: dict[str, Any] = {"wait": f"{wait:.1f}"}
        if since is not None:
            params["since"] = since
        return Call("GET", self._task_path(project_id, task_id), self._task, params=params)

    def _long_wait(self, deadline: float | None) -> float:
        """How long the next long poll may wait: LONG_POLL_SECONDS, within the client's
        read timeout (less a margin) and the caller's deadline; 0: do not long-poll."""
        wait = LONG_POLL_SECONDS
        if self._timeout.read is not None:
            wait = min(wait, self._timeout.read - 5.0)
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        return wait if wait >= 1.0 else 0.0

    def _list_exports(self, project_id: str, params: Mapping[str, Any]) -> Call[TaskPage]:
        path = f"/v1/projects/{project_id}/exports"
        return Call("GET", path, self._page, params=_drop_none(params))

    def _cancel(self, project_id: str, task_id: str) -> Call[Task]:
        return Call("POST", self._task_path(project_id, task_id) + "/cancel", self._task)

    def _delete(self, project_id: str, task_id: str) -> Call[None]:
        return Call("DELETE", self._task_path(project_id, task_id), _none)

    def _manifest(self, project_id: str, task_id: str) -> Call[dict[str, Any]]:
        return Call("GET", self._task_path(project_id, task_id) + "/manifest", _json)

    @staticmethod
    def _task_path(project_id: str, task_id: str) -> str:
        return f"/v1/projects/{project_id}/exports/{task_id}"

    # -- answers

    @staticmethod
    def _task(r: httpx.Response) -> Task:
        task = Task.from_json(_json(r))
        version = str(r.headers.get("X-Task-Version", ""))
        return replace(task, version=int(version)) if version.isdigit() else task

    @staticmethod
    def _page(r: httpx.Response) -> TaskPage:
        data = _json(r)
        return TaskPage([Task.from_json(t) for t in data["export_tasks"]], int(data["count"]))

    @staticmethod
    def _dataset(r: httpx.Response) -> Dataset:
        return Dataset.from_json(_json(r))

    @staticmethod
    def _datasets(r: httpx.Response) -> list[Dataset]:
        return [Dataset.from_json(d) for d in _json(r)["datasets"]]

    @staticmethod
    def _connection(r: httpx.Response) -> ConnectionInfo:
        return ConnectionInfo.from_json(_json(r))

    @staticmethod
    def _connections(r: httpx.Response) -> list[ConnectionInfo]:
        return [ConnectionInfo.from_json(c) for c in _json(r)["connections"]]

    @staticmethod
    def _token(r: httpx.Response) -> TokenInfo:
        return TokenInfo.from_json(_json(r))

    @staticmethod
    def _tokens(r: httpx.Response) -> list[TokenInfo]:
        return [TokenInfo.from_json(t) for t in _json(r)["tokens"]]

    @staticmethod
    def _raise_for(r: httpx.Response) -> None:
        """An error answer as its exception (the body must have been read)."""
        if r.status_code >= 400:
            raise error_for(r.status_code, r.content)

    # -- retries and polling

    def _retry_after_error(
        self, call: Call[Any], exc: httpx.TransportError, attempt: int, start: float
    ) -> float:
        """The delay before trying `call` again after a transport error, or the error to
        raise: connecting failed (any call), or the connection broke (safe calls only)."""
        connecting = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        if not (connecting or call.safe_to_repeat):
            raise ServerUnreachable(self.url, _reason(exc)) from exc
        delay = self._budgeted(backoff(attempt, RETRY_BASE, RETRY_CAP), start)
        if delay is None:
            raise ServerUnreachable(self.url, _reason(exc)) from exc
        log.info("exportd at %s: %s; trying again in %.1f s", self.url, _reason(exc), delay)
        return delay

    def _retry_after_status(
        self, call: Call[Any], r: httpx.Response, attempt: int, start: float
    ) -> float | None:
        """The delay before trying `call` again after a 5xx answer; None: take the answer."""
        if r.status_code not in RETRY_STATUSES or not call.safe_to_repeat:
            return None
        told = _retry_after_header(r)
        delay = told if told is not None else backoff(attempt, RETRY_BASE, RETRY_CAP)
        return self._budgeted(delay, start)

    def _budgeted(self, delay: float, start: float) -> float | None:
        left = self.retry_seconds - (time.monotonic() - start)
        return None if left <= 0 else min(delay, left)

    @staticmethod
    def _poll_delay(task: Task, polls: int, deadline: float | None) -> float:
        """How long to wait before the next poll: what the server said (`Retry-After`),
        else 1 s doubling to 30 s; never past the deadline."""
        delay = float(task.retry_after or backoff(polls, POLL_BASE, POLL_CAP))
        if deadline is not None:
            delay = max(0.0, min(delay, deadline - time.monotonic()))
        return delay

    @staticmethod
    def _event_task(name: str, data: str) -> Task | None:
        """A live event as a Task; None for `end` (the stream is over)."""
        if name == "end":
            return None
        return Task.from_json(orjson.loads(data), event=name)

    @staticmethod
    def _check_deadline(task: Task, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() >= deadline and not task.is_terminal:
            raise WaitTimeout(f"export {task.task_id} still {task.status}")

    @staticmethod
    def _attachment_name(r: httpx.Response, fallback: str) -> str:
        disposition = str(r.headers.get("content-disposition", ""))
        for part in disposition.split(";"):
            part = part.strip()
            if part.startswith("filename="):
                name = part[len("filename=") :].strip('"')
                if name and "/" not in name and "\\" not in name and name not in (".", ".."):
                    return name
        return fallback

    def _download_target(self, r: httpx.Response, dest: Path, task_id: str) -> Path:
        return dest / self._attachment_name(r, task_id) if dest.is_dir() else dest


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _retry_after_header(r: httpx.Response) -> float | None:
    value = r.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


UPDATE = Callable[[Task], None]
FOLLOW_ERRORS = (httpx.TransportError, SSEError, ServerError, ServerUnreachable)


class Client(BaseClient):
    """The blocking client. Use it as a context manager, or `close()` it."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retry_seconds: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout=timeout, retry_seconds=retry_seconds)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=self._timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, call: Call[T]) -> T:
        """Send `call`, retrying as the module's docstring says, and read its answer."""
        start, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                r = self._http.request(
                    call.method, call.path, json=call.json, params=call.params,
                    headers=call.headers,
                )  # fmt: skip
            except httpx.TransportError as exc:
                time.sleep(self._retry_after_error(call, exc, attempt, start))
                continue
            delay = self._retry_after_status(call, r, attempt, start)
            if delay is None:
                self._raise_for(r)
                return call.parse(r)
            time.sleep(delay)

    def create_project(self, project_id: str) -> dict[str, Any]:
        return self.send(self._create_project(project_id))

    def create_token(
        self,
        project_id: str,
        role: str = "writer",
        *,
        name: str | None = None,
        expires_in: int | None = None,
    ) -> TokenInfo:
        return self.send(self._create_token(project_id, role, name, expires_in))

    def list_tokens(self, project_id: str) -> list[TokenInfo]:
        return self.send(self._list_tokens(project_id))

    def revoke_token(self, project_id: str, token_id: str) -> None:
        self.send(self._revoke_token(project_id, token_id))

    def add_connection(self, name: str, url: str, projects: list[str]) -> ConnectionInfo:
        return self.send(self._add_connection(name, url, projects))

    def list_connections(self) -> list[ConnectionInfo]:
        return self.send(self._list_connections())

    def delete_connection(self, name: str) -> None:
        self.send(self._delete_connection(name))

    def add_dataset(self, project_id: str, **body: Any) -> Dataset:
        return self.send(self._add_dataset(project_id, body))

    def list_datasets(self, project_id: str) -> list[Dataset]:
        return self.send(self._list_datasets(project_id))

    def create_export(
        self,
        project_id: str,
        dataset_id: str,
        *,
        fields: Sequence[str | Mapping[str, str] | tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Task:
        """Start an export; `options` are the request's other fields (format, filter,
        format_options, parallelism, ...). A field renamed: `("dep_delay", "delay")`."""
        return self.send(
            self._create_export(project_id, dataset_id, fields, idempotency_key, options)
        )

    def upload(self, project_id: str, path: Path | str, name: str | None = None) -> dict[str, Any]:
        """Upload a file to import (streamed from disk): its upload_id, bytes and sha256."""
        path = Path(path)
        with path.open("rb") as fh:
            r = self._http.post(
                f"/v1/projects/{project_id}/uploads", params={"name": name or path.name},
                content=fh, timeout=httpx.Timeout(None, connect=10.0),
            )  # fmt: skip
        self._raise_for(r)
        return dict(_json(r))

    def create_import(
        self,
        project_id: str,
        dataset_id: str,
        *,
        file: Path | str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Task:
        """Start an import into a writable dataset: `file` (a local file, uploaded
        first), or `upload_id`, `path` (+ `connection`) or `key` among `options`, with
        the request's other fields (format, mapping, constants, mode, max_errors, ...)."""
        if file is not None:
            options = {**options, "upload_id": self.upload(project_id, file)["upload_id"]}
        return self.send(self._create_import(project_id, dataset_id, idempotency_key, options))

    def get_export(self, project_id: str, task_id: str) -> Task:
        return self.send(self._get_export(project_id, task_id))

    def list_exports(self, project_id: str, **params: Any) -> TaskPage:
        return self.send(self._list_exports(project_id, params))

    def cancel(self, project_id: str, task_id: str) -> Task:
        return self.send(self._cancel(project_id, task_id))

    def delete(self, project_id: str, task_id: str) -> None:
        self.send(self._delete(project_id, task_id))

    def manifest(self, project_id: str, task_id: str) -> dict[str, Any]:
        return self.send(self._manifest(project_id, task_id))

    def download(self, project_id: str, task_id: str, dest: Path | str = ".") -> Path:
        """Save the task's file into `dest` (a directory: under the file's own name)."""
        path = self._task_path(project_id, task_id) + "/download"
        with self._http.stream("GET", path, follow_redirects=True) as r:
            if r.status_code >= 400:
                r.read()
                self._raise_for(r)
            target = self._download_target(r, Path(dest), task_id)
            with open(target, "wb") as fh:
                for chunk in r.iter_bytes(1 << 20):
                    fh.write(chunk)
        return target

    def events(self, project_id: str, task_id: str) -> Iterator[Task]:
        """The task's live events (`status`, `stage`, `progress`), until it ends."""
        path = self._task_path(project_id, task_id) + "/events"
        with self._http.stream("GET", path, timeout=httpx.Timeout(None, connect=10.0)) as r:
            if r.status_code >= 400:
                r.read()
                self._raise_for(r)
            for sse in EventSource(r).iter_sse():
                if not sse.data:  # `retry:` alone, comments
                    continue
                task = self._event_task(sse.event, sse.data)
                if task is None:
                    return
                yield task

    def wait(
        self,
        project_id: str,
        task_id: str,
        on_update: UPDATE | None = None,
        timeout: float | None = None,
    ) -> Task:
        """Follow the task until it ends and return its full final status: live over its
        events, or by polling when the stream fails. `on_update` sees every change."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for task in self.events(project_id, task_id):
                if on_update:
                    on_update(task)
                if task.is_terminal:
                    return self.get_export(project_id, task_id)
                self._check_deadline(task, deadline)
        except FOLLOW_ERRORS as exc:
            log.info("events of %s unavailable (%s); polling", task_id, exc)
        return self._poll(project_id, task_id, on_update, deadline)

    def _poll(
        self, project_id: str, task_id: str, on_update: UPDATE | None, deadline: float | None
    ) -> Task:
        """Long polls (`?wait=`: answered as soon as the task changes); against a server
        that does not long-poll (no `X-Task-Version`), polls as `Retry-After` says."""
        polls, since = 0, None
        while True:
            wait = self._long_wait(deadline)
            if wait:
                task = self.send(self._long_poll(project_id, task_id, since, wait))
            else:
                task = self.get_export(project_id, task_id)
            if on_update:
                on_update(task)
            if task.is_terminal:
                return task
            self._check_deadline(task, deadline)
            if wait and task.version is not None:
                since = task.version
                continue
            polls += 1
            time.sleep(self._poll_delay(task, polls, deadline))


AUPDATE = Callable[[Task], Awaitable[None] | None]


class AsyncClient(BaseClient):
    """The asynchronous client (`async with AsyncClient(...) as c: await c.get_export(...)`)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retry_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout=timeout, retry_seconds=retry_seconds)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=self._timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send `call`, retrying as the module's docstring says, and read its answer."""
        start, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                r = await self._http.request(
                    call.method, call.path, json=call.json, params=call.params,
                    headers=call.headers,
                )  # fmt: skip
            except httpx.TransportError as exc:
                await anyio.sleep(self._retry_after_error(call, exc, attempt, start))
                continue
            delay = self._retry_after_status(call, r, attempt, start)
            if delay is None:
                self._raise_for(r)
                return call.parse(r)
            await anyio.sleep(delay)

    async def create_project(self, project_id: str) -> dict[str, Any]:
        return await self.send(self._create_project(project_id))

    async def create_token(
        self,
        project_id: str,
        role: str = "writer",
        *,
        name: str | None = None,
        expires_in: int | None = None,
    ) -> TokenInfo:
        return await self.send(self._create_token(project_id, role, name, expires_in))

    async def list_tokens(self, project_id: str) -> list[TokenInfo]:
        return await self.send(self._list_tokens(project_id))

    async def revoke_token(self, project_id: str, token_id: str) -> None:
        await self.send(self._revoke_token(project_id, token_id))

    async def add_connection(self, name: str, url: str, projects: list[str]) -> ConnectionInfo:
        return await self.send(self._add_connection(name, url, projects))

    async def list_connections(self) -> list[ConnectionInfo]:
        return await self.send(self._list_connections())

    async def delete_connection(self, name: str) -> None:
        await self.send(self._delete_connection(name))

    async def add_dataset(self, project_id: str, **body: Any) -> Dataset:
        return await self.send(self._add_dataset(project_id, body))

    async def list_datasets(self, project_id: str) -> list[Dataset]:
        return await self.send(self._list_datasets(project_id))

    async def create_export(
        self,
        project_id: str,
        dataset_id: str,
        *,
        fields: Sequence[str | Mapping[str, str] | tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Task:
        """Start an export (see `Client.create_export`)."""
        return await self.send(
            self._create_export(project_id, dataset_id, fields, idempotency_key, options)
        )

    async def upload(
        self, project_id: str, path: Path | str, name: str | None = None
    ) -> dict[str, Any]:
        """Upload a file to import (see `Client.upload`)."""
        path = Path(path)

        async def chunks() -> AsyncIterator[bytes]:
            with path.open("rb") as fh:
                while chunk := await anyio.to_thread.run_sync(fh.read, 1 << 20):
                    yield chunk

        r = await self._http.post(
            f"/v1/projects/{project_id}/uploads", params={"name": name or path.name},
            content=chunks(), timeout=httpx.Timeout(None, connect=10.0),
        )  # fmt: skip
        self._raise_for(r)
        return dict(_json(r))

    async def create_import(
        self,
        project_id: str,
        dataset_id: str,
        *,
        file: Path | str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Task:
        """Start an import (see `Client.create_import`)."""
        if file is not None:
            up = await self.upload(project_id, file)
            options = {**options, "upload_id": up["upload_id"]}
        return await self.send(
            self._create_import(project_id, dataset_id, idempotency_key, options)
        )

    async def get_export(self, project_id: str, task_id: str) -> Task:
        return await self.send(self._get_export(project_id, task_id))

    async def list_exports(self, project_id: str, **params: Any) -> TaskPage:
        return await self.send(self._list_exports(project_id, params))

    async def cancel(self, project_id: str, task_id: str) -> Task:
        return await self.send(self._cancel(project_id, task_id))

    async def delete(self, project_id: str, task_id: str) -> None:
        await self.send(self._delete(project_id, task_id))

    async def manifest(self, project_id: str, task_id: str) -> dict[str, Any]:
        return await self.send(self._manifest(project_id, task_id))

    async def download(self, project_id: str, task_id: str, dest: Path | str = ".") -> Path:
        """Save the task's file into `dest` (a directory: under the file's own name)."""
        path = self._task_path(project_id, task_id) + "/download"
        async with self._http.stream("GET", path, follow_redirects=True) as r:
            if r.status_code >= 400:
                await r.aread()
                self._raise_for(r)
            target = self._download_target(r, Path(dest), task_id)
            async with await anyio.open_file(target, "wb") as fh:
                async for chunk in r.aiter_bytes(1 << 20):
                    await fh.write(chunk)
        return target

    async def events(self, project_id: str, task_id: str) -> AsyncIterator[Task]:
        """The task's live events (`status`, `stage`, `progress`), until it ends."""
        path = self._task_path(project_id, task_id) + "/events"
        timeout = httpx.Timeout(None, connect=10.0)
        async with self._http.stream("GET", path, timeout=timeout) as r:
            if r.status_code >= 400:
                await r.aread()
                self._raise_for(r)
            async for sse in EventSource(r).aiter_sse():
                if not sse.data:  # `retry:` alone, comments
                    continue
                task = self._event_task(sse.event, sse.data)
                if task is None:
                    return
                yield task

    async def wait(
        self,
        project_id: str,
        task_id: str,
        on_update: AUPDATE | None = None,
        timeout: float | None = None,
    ) -> Task:
        """Follow the task until it ends and return its full final status (see
        `Client.wait`); `on_update` may be a plain function or a coroutine function."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            async for task in self.events(project_id, task_id):
                await _call(on_update, task)
                if task.is_terminal:
                    return await self.get_export(project_id, task_id)
                self._check_deadline(task, deadline)
        except FOLLOW_ERRORS as exc:
            log.info("events of %s unavailable (%s); polling", task_id, exc)
        polls, since = 0, None
        while True:  # long polls, else as `Retry-After` says (see `Client._poll`)
            wait = self._long_wait(deadline)
            if wait:
                task = await self.send(self._long_poll(project_id, task_id, since, wait))
            else:
                task = await self.get_export(project_id, task_id)
            await _call(on_update, task)
            if task.is_terminal:
                return task
            self._check_deadline(task, deadline)
            if wait and task.version is not None:
                since = task.version
                continue
            polls += 1
            await anyio.sleep(self._poll_delay(task, polls, deadline))


async def _call(on_update: AUPDATE | None, task: Task) -> None:
    if on_update is not None:
        result = on_update(task)
        if result is not None:
            await result
