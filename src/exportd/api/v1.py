"""Native API routes (`/v1`). Each handler parses, calls the service and serializes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import TypeAdapter

from exportd.api.deps import (
    DatasetId,
    ProjectId,
    Svc,
    TaskId,
    Token,
    Who,
    base_url,
    errors,
    links,
)
from exportd.api.schemas import (
    ConnectionList,
    ConnectionView,
    DatasetList,
    DatasetView,
    GrantedConnectionList,
    ProjectSettingsView,
    ProjectView,
    TaskList,
    TaskView,
    TokenList,
    TokenView,
    WebhookSecretView,
)
from exportd.api.seed_mapping import (
    ACTION_FILTERS,
    Seed002Status,
    StatusFilter,
    statuses_for_filter,
    statuses_for_task_status,
)
from exportd.api.sse import LONG_POLL_MAX_SECONDS, task_events, wait_for_change
from exportd.api.status_cache import StatusCache
from exportd.api.views import connection_json, dataset_json, iso, retry_after_seconds, task_json
from exportd.errors import Forbidden
from exportd.model import Role, Task, TaskStatus
from exportd.model.requests import (
    NO_NUL,
    ConnectionBody,
    ConnectionRequest,
    DatasetProtectionRequest,
    DatasetRequest,
    ExportRequest,
    ProjectRequest,
    ProjectSettingsRequest,
    TokenRequest,
)
from exportd.service import Download, Principal
from exportd.store import SORT_FIELDS, TaskQuery, TokenInfo, sort_order

router = APIRouter(prefix="/v1")

TokenId = Annotated[
    str, Path(pattern=NO_NUL, min_length=1, max_length=32, description="a token's id")
]

READ_ERRORS = errors(400, 401, 404, 500)
WRITE_ERRORS = errors(400, 401, 403, 404, 409, 500)
BODY_ERRORS = errors(400, 401, 403, 404, 409, 413, 500)
FILE_ERRORS = errors(400, 401, 404, 409, 500)

RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "seconds to wait before polling again (unfinished tasks only)",
        "schema": {"type": "integer"},
    }
}


SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "one event of the stream",
    "properties": {
        "event": {"type": "string", "enum": ["status", "stage", "progress", "end"]},
        "data": {
            "type": "string",
            "description": "JSON: the task's status, stage, counts and partitions "
            "(`end`: task_id and the final status)",
        },
        "id": {"type": "string", "description": "the task's version"},
    },
    "required": ["event", "data"],
}


def token_json(t: TokenInfo) -> dict[str, Any]:
    """A token as an administrator sees it: never its value (only its hash is kept)."""
    return {
        "token_id": t.token_id,
        "project_id": t.project_id,
        "name": t.name,
        "role": t.role.value,
        "create_time": iso(t.create_time),
        "expires_time": iso(t.expires_time),
        "last_used_time": iso(t.last_used_time),
        "expired": t.expired(datetime.now(UTC)),
    }


ETAG_HEADER = {"ETag": {"description": "weak tag of the status body", "schema": {"type": "string"}}}


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110's weak comparison of `If-None-Match` (a list of tags, or `*`) with ours."""
    ours = etag.removeprefix("W/")
    return any(
        tag == "*" or tag.removeprefix("W/") == ours
        for tag in (t.strip() for t in if_none_match.split(","))
    )


_TASK_VIEW = TypeAdapter(TaskView)


def _task_response(request: Request, response: Response, task: Task) -> dict[str, Any]:
    wait = retry_after_seconds(task)
    if wait is not None:
        response.headers["Retry-After"] = str(wait)
    return task_json(task, base_url(request), links(request))


# ---- administration ----------------------------------------------------------------------


@router.post(
    "/projects",
    status_code=201,
    tags=["admin"],
    response_model=ProjectView,
    responses=errors(400, 401, 403, 409, 413, 500),
)
def create_project(body: ProjectRequest, svc: Svc, who: Who) -> dict[str, Any]:
    """Create a project (the administrator token only); the answer shows its webhook
    signing secret, this once."""
    if not who.is_admin:
        raise Forbidden("only the administrator can create projects", "FORBIDDEN")
    return svc.create_project(body.project_id)


@router.get(
    "/projects/{project_id}/settings",
    tags=["admin"],
    response_model=ProjectSettingsView,
    responses=errors(400, 401, 403, 404, 500),
)
def get_project_settings(project_id: ProjectId, svc: Svc, who: Who) -> dict[str, Any]:
    """The project's storage root and notification defaults (admin role)."""
    svc.authorize(who, project_id, Role.ADMIN)
    return svc.project_settings(project_id)


@router.put(
    "/projects/{project_id}/settings",
    tags=["admin"],
    response_model=ProjectSettingsView,
    responses=BODY_ERRORS,
)
def put_project_settings(
    project_id: ProjectId, body: ProjectSettingsRequest, svc: Svc, who: Who
) -> dict[str, Any]:
    """Replace the project's settings: notification defaults of its exports, and (server
    administrator only) the storage root its exports are written under."""
    svc.authorize(who, project_id, Role.ADMIN)
    return svc.set_project_settings(who, project_id, body)


@router.post(
    "/projects/{project_id}/webhook-secret",
    status_code=201,
    tags=["admin"],
    response_model=WebhookSecretView,
    responses=errors(400, 401, 403, 404, 500),
)
def rotate_webhook_secret(project_id: ProjectId, svc: Svc, who: Who) -> dict[str, Any]:
    """A new `whsec_...` secret signing the project's webhooks; shown only in this answer."""
    svc.authorize(who, project_id, Role.ADMIN)
    return svc.rotate_webhook_secret(project_id)


@router.post(
    "/projects/{project_id}/tokens",
    status_code=201,
    tags=["admin"],
    response_model=TokenView,
    responses=BODY_ERRORS,
)
def create_token(project_id: ProjectId, body: TokenRequest, svc: Svc, who: Who) -> dict[str, Any]:
    """A new token of the project (admin role), optionally named and expiring after
    `expires_in` seconds; the token itself is shown only in this answer."""
    svc.authorize(who, project_id, Role.ADMIN)
    token, info = svc.create_token(project_id, body)
    return {"token": token, **token_json(info)}


@router.get(
    "/projects/{project_id}/tokens",
    tags=["admin"],
    response_model=TokenList,
    responses=errors(400, 401, 403, 404, 500),
)
def list_tokens(project_id: ProjectId, svc: Svc, who: Who) -> dict[str, Any]:
    """The project's tokens (admin role): id, name, role and times, never the token."""
    svc.authorize(who, project_id, Role.ADMIN)
    items = [token_json(t) for t in svc.list_tokens(project_id)]
    return {"tokens": items, "count": len(items)}


@router.delete(
    "/projects/{project_id}/tokens/{token_id}",
    status_code=204,
    tags=["admin"],
    responses=errors(400, 401, 403, 404, 500),
)
def revoke_token(project_id: ProjectId, token_id: TokenId, svc: Svc, who: Who) -> Response:
    """Revoke a token (admin role): refused (401) from now on."""
    svc.authorize(who, project_id, Role.ADMIN)
    svc.revoke_token(project_id, token_id)
    return Response(status_code=204)


# ---- connection profiles (server administrator) -------------------------------------------

ConnectionName = Annotated[
    str, Path(pattern=NO_NUL, max_length=100, description="the profile's name")
]
CONNECTION_ERRORS = errors(400, 401, 403, 404, 409, 413, 500)


def _server_admin(who: Principal) -> None:
    """Connection profiles are the server administrator's: 403 for every project token,
    project admins included."""
    if not who.is_admin:
        raise Forbidden("only the server administrator manages connections", "FORBIDDEN")


@router.post(
    "/connections",
    status_code=201,
    tags=["admin"],
    response_model=ConnectionView,
    responses=CONNECTION_ERRORS,
)
def create_connection(body: ConnectionRequest, svc: Svc, who: Who) -> dict[str, Any]:
    """Register a connection profile (administrator token only): a database URL, kept
    server-side and never shown again, and the projects that may register datasets on
    it. SQLite files only under the source directories; exportd's own store never."""
    _server_admin(who)
    conn, _created, reachable = svc.put_connection(body.name, body, replace=False)
    return connection_json(conn, reachable)


@router.put(
    "/connections/{name}",
    tags=["admin"],
    response_model=ConnectionView,
    responses=CONNECTION_ERRORS,
)
def put_connection(
    name: ConnectionName, body: ConnectionBody, svc: Svc, who: Who
) -> dict[str, Any]:
    """Replace a profile's URL and grants (a new password, other projects); datasets on
    it use the new ones from their next connection. 404 if there is no such profile."""
    _server_admin(who)
    conn, _created, reachable = svc.put_connection(name, body, replace=True)
    return connection_json(conn, reachable)


@router.get(
    "/connections",
    tags=["admin"],
    response_model=ConnectionList,
    responses=errors(400, 401, 403, 500),
)
def list_connections(svc: Svc, who: Who) -> dict[str, Any]:
    """Every connection profile, from the settings and the API (never their URLs)."""
    _server_admin(who)
    items = [connection_json(c) for c in svc.list_connections()]
    return {"connections": items, "count": len(items)}


@router.get(
    "/connections/{name}",
    tags=["admin"],
    response_model=ConnectionView,
    responses=errors(400, 401, 403, 404, 500),
)
def get_connection(name: ConnectionName, svc: Svc, who: Who) -> dict[str, Any]:
    """One connection profile (never its URL)."""
    _server_admin(who)
    return connection_json(svc.get_connection(name))


@router.delete(
    "/connections/{name}",
    status_code=204,
    tags=["admin"],
    responses=errors(400, 401, 403, 404, 409, 500),
)
def delete_connection(name: ConnectionName, svc: Svc, who: Who) -> Response:
    """Remove a profile; datasets on it fail with SOURCE_UNAVAILABLE until it is back."""
    _server_admin(who)
    svc.delete_connection(name)
    return Response(status_code=204)


@router.get(
    "/projects/{project_id}/connections",
    tags=["datasets"],
    response_model=GrantedConnectionList,
    responses=errors(400, 401, 403, 404, 500),
)
def project_connections(project_id: ProjectId, svc: Svc, who: Who) -> dict[str, Any]:
    """The connection profiles the project may register datasets on (admin role)."""
    svc.authorize(who, project_id, Role.ADMIN)
    items = [{"name": c.name, "backend": c.backend} for c in svc.list_connections(project_id)]
    return {"connections": items, "count": len(items)}


@router.post(
    "/projects/{project_id}/datasets",
    status_code=201,
    tags=["datasets"],
    response_model=DatasetView,
    responses=BODY_ERRORS,
)
def register_dataset(
    project_id: ProjectId, body: DatasetRequest, svc: Svc, who: Who
) -> dict[str, Any]:
    """Register a dataset (admin role). A database dataset names a connection profile
    granted to the project; only the administrator token may give a `url` (kept
    server-side). An unreachable source is a 503 `SOURCE_UNAVAILABLE` that says no more."""
    svc.authorize(who, project_id, Role.ADMIN)
    return dataset_json(svc.register_dataset(who, project_id, body))


@router.get(
    "/projects/{project_id}/datasets",
    tags=["datasets"],
    response_model=DatasetList,
    responses=READ_ERRORS,
)
def list_datasets(project_id: ProjectId, svc: Svc, who: Who) -> dict[str, Any]:
    """The project's datasets with their fields and types (never their URLs)."""
    svc.authorize(who, project_id, Role.READER)
    items = [dataset_json(d) for d in svc.list_datasets(project_id)]
    return {"datasets": items, "count": len(items)}


@router.get(
    "/projects/{project_id}/datasets/{dataset_id}",
    tags=["datasets"],
    response_model=DatasetView,
    responses=READ_ERRORS,
)
def describe_dataset(
    project_id: ProjectId, dataset_id: DatasetId, svc: Svc, who: Who
) -> dict[str, Any]:
    """One dataset: its fields (name, source type, kind), key and table."""
    svc.authorize(who, project_id, Role.READER)
    return dataset_json(svc.get_dataset(project_id, dataset_id))


@router.patch(
    "/projects/{project_id}/datasets/{dataset_id}",
    tags=["datasets"],
    response_model=DatasetView,
    responses=BODY_ERRORS,
)
def change_dataset_protection(
    project_id: ProjectId,
    dataset_id: DatasetId,
    body: DatasetProtectionRequest,
    svc: Svc,
    who: Who,
) -> dict[str, Any]:
    """Change a database dataset's source protection (admin role): `max_connections`
    and `statement_timeout_seconds` (null removes one; fields not given are kept; no
    other field may be changed). It applies to the partitions claimed afterwards
    (docs/consistency.md); a bad value changes nothing."""
    svc.authorize(who, project_id, Role.ADMIN)
    return dataset_json(svc.change_protection(project_id, dataset_id, body))


@router.delete(
    "/projects/{project_id}/datasets/{dataset_id}",
    status_code=204,
    tags=["datasets"],
    responses=errors(400, 401, 403, 404, 500),
)
def delete_dataset(project_id: ProjectId, dataset_id: DatasetId, svc: Svc, who: Who) -> Response:
    """Remove a dataset (admin role); existing tasks keep their files."""
    svc.authorize(who, project_id, Role.ADMIN)
    svc.delete_dataset(project_id, dataset_id)
    return Response(status_code=204)


# ---- exports -------------------------------------------------------------------------------


@router.post(
    "/projects/{project_id}/exports",
    status_code=202,
    tags=["exports"],
    response_model=TaskView,
    responses={
        **BODY_ERRORS,
        202: {"description": "the new task", "headers": RETRY_AFTER_HEADER},
        200: {"model": TaskView, "description": "the task this Idempotency-Key created"},
    },
)
def create_export(
    project_id: ProjectId,
    body: ExportRequest,
    request: Request,
    response: Response,
    svc: Svc,
    who: Who,
    idempotency_key: Annotated[
        str | None, Header(pattern=NO_NUL, min_length=1, max_length=255)
    ] = None,
) -> dict[str, Any]:
    """Start an export (writer role); answers at once (202) with the task. A repeated
    `Idempotency-Key` returns the task it created first (200)."""
    svc.authorize(who, project_id, Role.WRITER)
    task, created = svc.submit(project_id, body, idempotency_key, who)
    return created_response(request, response, task, created, "exports")


def created_response(
    request: Request, response: Response, task: Task, created: bool, kind: str
) -> dict[str, Any]:
    """A create route's answer: 202 and the new task, or 200 and the task a repeated
    `Idempotency-Key` created first; `Location` names the task under `kind`."""
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/projects/{task.project_id}/{kind}/{task.task_id}"
    return _task_response(request, response, task)


SortField = Literal["create_time", "update_time", "end_time", "file_name", "status", "task_id"]
assert set(SortField.__args__) == set(SORT_FIELDS)  # type: ignore[attr-defined]


@router.get(
    "/projects/{project_id}/exports",
    tags=["exports"],
    response_model=TaskList,
    responses=READ_ERRORS,
)
def list_exports(
    project_id: ProjectId,
    request: Request,
    svc: Svc,
    who: Who,
    status: Annotated[
        list[StatusFilter] | None,
        Query(
            max_length=20,
            description="any of these native statuses (the `status` field: FAILED is "
            "FAILED only); a seed-002 value that is not native (IN_PROGRESS, PROCESSING...) "
            "is read as `task_status`",
        ),
    ] = None,
    task_status: Annotated[
        list[Seed002Status] | None,
        Query(
            max_length=20,
            description="any of these seed-002 TaskStatusEnum values, as the `task_status` "
            "field shows them (FAILED is FAILED and TIMEOUT); with `status`, both must hold",
        ),
    ] = None,
    file_name: Annotated[
        str | None, Query(pattern=NO_NUL, max_length=255, description="exact name")
    ] = None,
    file_name_prefix: Annotated[str | None, Query(pattern=NO_NUL, max_length=255)] = None,
    task_id: Annotated[str | None, Query(pattern=NO_NUL, max_length=64)] = None,
    dataset_id: Annotated[str | None, Query(pattern=NO_NUL, max_length=200)] = None,
    is_download: bool | None = None,
    created_from: Annotated[datetime | None, Query(description="create_time >= this")] = None,
    created_to: Annotated[datetime | None, Query(description="create_time < this")] = None,
    sort_field: SortField | None = None,
    sort_type: Annotated[
        Literal["asc", "desc"] | None,
        Query(description="default asc; only together with sort_field (else 400)"),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    action: Annotated[
        Literal["EXPORT", "REPORT", "IMPORT"] | None,
        Query(description="one kind: EXPORT, or REPORT (seed 001's word; IMPORT too) imports"),
    ] = None,
) -> dict[str, Any]:
    """List a project's exports, newest first unless `sort_field` (+ `sort_type`, default
    asc) says; ties are broken by task_id, so pages never overlap or skip."""
    svc.authorize(who, project_id, Role.READER)
    sort_by, descending = sort_order(sort_field, sort_type)
    statuses = None
    if status:
        statuses = tuple(dict.fromkeys(s for v in status for s in statuses_for_filter(v.value)))
    if task_status:
        seeded = {s for v in task_status for s in statuses_for_task_status(v)}
        among = statuses if statuses is not None else tuple(TaskStatus)
        statuses = tuple(s for s in among if s in seeded)
    q = TaskQuery(
        statuses=statuses,
        file_name=file_name,
        file_name_prefix=file_name_prefix,
        task_id=task_id,
        dataset_id=dataset_id,
        is_download=is_download,
        created_from=created_from,
        created_to=created_to,
        sort_field=sort_by,
        descending=descending,
        offset=offset,
        limit=limit,
        kind=ACTION_FILTERS[action] if action else None,
    )
    tasks, count = svc.list(project_id, q)
    base, signer = base_url(request), links(request)
    return {"export_tasks": [task_json(t, base, signer) for t in tasks], "count": count}


@router.get(
    "/projects/{project_id}/exports/{task_id}",
    tags=["exports"],
    response_model=TaskView,
    responses={
        **READ_ERRORS,
        200: {"description": "the task", "headers": {**RETRY_AFTER_HEADER, **ETAG_HEADER}},
        304: {"description": "not modified since the `If-None-Match` tag", "headers": ETAG_HEADER},
    },
)
async def get_export(
    project_id: ProjectId,
    task_id: TaskId,
    request: Request,
    response: Response,
    svc: Svc,
    token: Token,
    wait: Annotated[
        float | None,
        Query(
            ge=0,
            le=LONG_POLL_MAX_SECONDS,
            description="long poll: answer as soon as the task changes (its version is not "
            "`since`), or after this many seconds (at most 60); a terminal task at once",
        ),
    ] = None,
    since: Annotated[
        int | None,
        Query(
            ge=0,
            le=2**31 - 1,
            description="with `wait`: the version the caller has seen (the `X-Task-Version` "
            "header of its last answer); default: the version when the request arrives",
        ),
    ] = None,
    if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Any:
    """The full status; unfinished tasks carry `Retry-After` (1 s doubling to 30 s).
    Every answer carries a weak `ETag`: a poller that sends it back in `If-None-Match`
    gets `304 Not Modified` (no body) for as long as nothing stored that the body shows
    has changed, at the cost of one indexed read (time-derived fields of the body it
    holds, `rows_per_second`, `eta_seconds`, are as of that body). A 200 carries
    `X-Task-Version`. With `wait`, a long poll (see the parameters)."""

    def head() -> tuple[str, bool]:  # one trip to the thread pool: who asks, and the tag
        svc.authorize(svc.authenticate(token), project_id, Role.READER)
        return svc.task_etag(project_id, task_id)

    etag, terminal = await anyio.to_thread.run_sync(head)
    if wait and not terminal:
        version = await anyio.to_thread.run_sync(svc.task_version, project_id, task_id)
        if version is not None and (since is None or since == version):
            poll = request.app.state.runtime.settings.events_poll_seconds
            await wait_for_change(svc, project_id, task_id, version, wait, poll)
            etag, terminal = await anyio.to_thread.run_sync(svc.task_etag, project_id, task_id)
    if if_none_match is not None and etag_matches(if_none_match, etag):
        return not_modified(etag)
    cache: StatusCache = request.app.state.status_cache
    key: tuple[str, ...] = (project_id, task_id, etag, base_url(request))

    async def build() -> tuple[tuple[str, ...], bytes, dict[str, str]]:
        tag = etag
        task = await anyio.to_thread.run_sync(svc.get, project_id, task_id)
        for _ in range(3):  # the tag of this very body: read again if it moved meanwhile
            again, _terminal = await anyio.to_thread.run_sync(svc.task_etag, project_id, task_id)
            if again == tag:
                break
            tag = again
            task = await anyio.to_thread.run_sync(svc.get, project_id, task_id)
        built = Response()
        data = _task_response(request, built, task)
        content = _TASK_VIEW.dump_json(_TASK_VIEW.validate_python(data), by_alias=True)
        extra = {"X-Task-Version": str(task.version), **dict(built.headers)}
        extra.pop("content-length", None)
        return (project_id, task_id, tag, base_url(request)), content, extra

    key, content, extra = await cache.get_or_build(key, build)
    return status_response(content, extra, key[2])


def not_modified(etag: str) -> Response:
    """The status GET's 304 (the route's and the status lane's)."""
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache"})


def status_response(content: bytes, extra: dict[str, str], etag: str) -> Response:
    """The status GET's 200 from a body and its headers (the route's and the status lane's)."""
    headers = {**extra, "ETag": etag, "Cache-Control": "no-cache"}
    return Response(content, media_type="application/json", headers=headers)


@router.post(
    "/projects/{project_id}/exports/{task_id}/cancel",
    status_code=202,
    tags=["exports"],
    response_model=TaskView,
    responses=WRITE_ERRORS,
)
def cancel_export(
    project_id: ProjectId,
    task_id: TaskId,
    request: Request,
    response: Response,
    svc: Svc,
    who: Who,
) -> dict[str, Any]:
    """Cancel (writer role): PENDING ends CANCELED at once, RUNNING goes CANCELING."""
    svc.authorize(who, project_id, Role.WRITER)
    return _task_response(request, response, svc.cancel(project_id, task_id))


@router.delete(
    "/projects/{project_id}/exports/{task_id}",
    status_code=204,
    tags=["exports"],
    responses=WRITE_ERRORS,
)
def delete_export(project_id: ProjectId, task_id: TaskId, svc: Svc, who: Who) -> Response:
    """Delete a finished task and its files (writer role)."""
    svc.authorize(who, project_id, Role.WRITER)
    svc.delete(project_id, task_id)
    return Response(status_code=204)


FILE_BODY = {
    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
    "description": "the file, in its format's media type (text/csv, application/x-ndjson, ...)",
}
REDIRECT = {"description": "to a freshly presigned URL of the file (S3 storage)"}


@router.get(
    "/projects/{project_id}/exports/{task_id}/download",
    tags=["exports"],
    response_class=StreamingResponse,
    responses={**FILE_ERRORS, 200: FILE_BODY, 307: REDIRECT},
)
def download_export(
    project_id: ProjectId,
    task_id: TaskId,
    request: Request,
    svc: Svc,
    who: Who,
    name: Annotated[
        str | None, Query(pattern=NO_NUL, max_length=255, description="a file of the task")
    ] = None,
) -> Response:
    """The file: streamed (local storage) or a 307 to a freshly presigned URL (S3); with
    `name`, another file of the task."""
    svc.authorize(who, project_id, Role.READER)
    return file_response(request, svc.download(project_id, task_id, name))


@router.get(
    "/links/{project_id}/{task_id}/{name}",
    tags=["exports"],
    response_class=StreamingResponse,
    responses={**errors(400, 403, 404, 409, 500), 200: FILE_BODY, 307: REDIRECT},
)
def follow_link(
    project_id: ProjectId,
    task_id: TaskId,
    name: Annotated[
        str, Path(pattern=NO_NUL, min_length=1, max_length=255, description="the file's name")
    ],
    request: Request,
    svc: Svc,
    expires: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    signature: Annotated[str | None, Query(pattern=NO_NUL, max_length=200)] = None,
) -> Response:
    """A signed link (from the status, a webhook or an email): no token needed until it
    expires; a tampered or expired link is 403 (`LINK_INVALID`, `LINK_EXPIRED`)."""
    return file_response(request, svc.download_link(project_id, task_id, name, expires, signature))


def file_response(request: Request, dl: Download) -> Response:
    if dl.redirect is not None:
        return RedirectResponse(dl.redirect, status_code=307)
    if dl.path is not None:
        return FileResponse(dl.path, media_type=dl.record.media_type, filename=dl.record.name)
    fh = request.app.state.runtime.storage.open_read(dl.record.key)
    return StreamingResponse(
        iter(lambda: fh.read(1 << 20), b""),
        media_type=dl.record.media_type,
        headers={"Content-Disposition": f'attachment; filename="{dl.record.name}"'},
    )


@router.get(
    "/projects/{project_id}/exports/{task_id}/manifest",
    tags=["exports"],
    response_class=Response,
    responses={
        **FILE_ERRORS,
        200: {
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "manifest.json: files, rows, checksums, partitions",
        },
    },
)
def export_manifest(project_id: ProjectId, task_id: TaskId, svc: Svc, who: Who) -> Response:
    """The task's manifest.json."""
    svc.authorize(who, project_id, Role.READER)
    return Response(svc.manifest(project_id, task_id), media_type="application/json")


@router.get(
    "/projects/{project_id}/exports/{task_id}/events",
    tags=["exports"],
    response_class=StreamingResponse,
    responses={
        **READ_ERRORS,
        200: {
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
            "description": "server-sent events `status`, `stage` and `progress` (each with "
            "the task's state as JSON, `id` = the task's version), then `end` once terminal",
        },
    },
)
def export_events(
    project_id: ProjectId, task_id: TaskId, request: Request, svc: Svc, who: Who
) -> StreamingResponse:
    """Live progress: every status, stage and progress change, until the task ends."""
    svc.authorize(who, project_id, Role.READER)
    svc.get(project_id, task_id)  # 404 before the stream starts
    settings = request.app.state.runtime.settings
    stream = task_events(
        svc, project_id, task_id, settings.events_poll_seconds, settings.events_heartbeat_seconds
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
