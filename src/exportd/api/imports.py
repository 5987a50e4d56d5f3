"""Import routes (`/v1`): uploads (streamed to storage) and import tasks. An import is a
task like an export: its status, cancel, events, download and manifest are the same
handlers, served under `/imports` too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from exportd.api import v1
from exportd.api.deps import ProjectId, Svc, Who, base_url, errors, links
from exportd.api.schemas import TaskList, TaskView
from exportd.api.seed_mapping import StatusFilter, statuses_for_filter
from exportd.api.views import task_json
from exportd.model import Role, TaskKind
from exportd.model.requests import NO_NUL, ImportRequest
from exportd.service_imports import ImportService
from exportd.store import TaskQuery

router = APIRouter(prefix="/v1")

UploadId = Annotated[str, Path(pattern=NO_NUL, max_length=64, description="an upload's id")]


@router.post(
    "/projects/{project_id}/uploads",
    status_code=201,
    tags=["imports"],
    responses=errors(400, 401, 403, 404, 413, 500),
)
async def create_upload(
    project_id: ProjectId,
    request: Request,
    svc: Svc,
    who: Who,
    name: Annotated[str, Query(min_length=1, max_length=200, pattern=NO_NUL)],
) -> dict[str, Any]:
    """Upload a file to import (writer role): the raw request body, streamed to storage
    (never held in memory) up to EXPORTD_MAX_UPLOAD_BYTES (413 beyond); answers its id,
    size and sha256. `name` is the file's name (its extension gives the format)."""
    await run_in_threadpool(svc.authorize, who, project_id, Role.WRITER)
    up = await ImportService(svc).upload(project_id, name, request.stream(), run_in_threadpool)
    return up.as_json()


@router.get(
    "/projects/{project_id}/uploads/{upload_id}", tags=["imports"], responses=v1.READ_ERRORS
)
def get_upload(project_id: ProjectId, upload_id: UploadId, svc: Svc, who: Who) -> dict[str, Any]:
    svc.authorize(who, project_id, Role.READER)
    return ImportService(svc).get_upload(project_id, upload_id).as_json()


@router.post(
    "/projects/{project_id}/imports",
    status_code=202,
    tags=["imports"],
    response_model=TaskView,
    responses={
        **v1.BODY_ERRORS,
        202: {"description": "the new task", "headers": v1.RETRY_AFTER_HEADER},
        200: {"model": TaskView, "description": "the task this Idempotency-Key created"},
    },
)
def create_import(
    project_id: ProjectId,
    body: ImportRequest,
    request: Request,
    response: Response,
    svc: Svc,
    who: Who,
    idempotency_key: Annotated[
        str | None, Header(pattern=NO_NUL, min_length=1, max_length=255)
    ] = None,
) -> dict[str, Any]:
    """Start an import (writer role) into a writable sql dataset; answers at once (202)
    with the task. A repeated `Idempotency-Key` returns the task it created first (200)."""
    svc.authorize(who, project_id, Role.WRITER)
    task, created = ImportService(svc).submit(project_id, body, idempotency_key, who)
    return v1.created_response(request, response, task, created, "imports")


@router.get(
    "/projects/{project_id}/imports",
    tags=["imports"],
    response_model=TaskList,
    responses=v1.READ_ERRORS,
)
def list_imports(
    project_id: ProjectId,
    request: Request,
    svc: Svc,
    who: Who,
    status: Annotated[list[StatusFilter] | None, Query(max_length=20)] = None,
    dataset_id: Annotated[str | None, Query(pattern=NO_NUL, max_length=200)] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """A project's imports, newest first (the same body as the exports listing)."""
    svc.authorize(who, project_id, Role.READER)
    statuses = None
    if status:
        statuses = tuple(dict.fromkeys(s for v in status for s in statuses_for_filter(v.value)))
    q = TaskQuery(
        statuses=statuses, dataset_id=dataset_id, offset=offset, limit=limit,
        kind=TaskKind.IMPORT,
    )  # fmt: skip
    tasks, count = svc.list(project_id, q)
    base, signer = base_url(request), links(request)
    return {"export_tasks": [task_json(t, base, signer) for t in tasks], "count": count}


_SAME: list[tuple[str, Callable[..., Any], list[str], Any]] = [
    ("/projects/{project_id}/imports/{task_id}", v1.get_export, ["GET"], TaskView),
    ("/projects/{project_id}/imports/{task_id}/cancel", v1.cancel_export, ["POST"], TaskView),
    ("/projects/{project_id}/imports/{task_id}/events", v1.export_events, ["GET"], None),
    ("/projects/{project_id}/imports/{task_id}/download", v1.download_export, ["GET"], None),
    ("/projects/{project_id}/imports/{task_id}/manifest", v1.export_manifest, ["GET"], None),
]
for path, handler, methods, model in _SAME:
    route = next(r for r in v1.router.routes if getattr(r, "endpoint", None) is handler)
    router.add_api_route(
        path, handler, methods=methods, tags=["imports"],
        response_model=model, status_code=getattr(route, "status_code", None),
        response_class=getattr(route, "response_class", None) or Response,
        responses=getattr(route, "responses", None), name=f"import_{handler.__name__}",
    )  # fmt: skip
