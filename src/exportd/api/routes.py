"""Native API routes (`/v1`). Each handler parses, calls the service and serializes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel

from exportd.api.views import dataset_json, retry_after_seconds, task_json
from exportd.domain import Role, TaskStatus
from exportd.errors import BadRequest, Forbidden
from exportd.links import LinkSigner
from exportd.requests import (
    DatasetRequest,
    ExportRequest,
    ProjectRequest,
    ProjectSettingsRequest,
    TokenRequest,
)
from exportd.service import Download, ExportService, Principal
from exportd.store.sql import SORT_FIELDS, TaskQuery


class ErrorBody(BaseModel):
    error_code: str
    error_msg: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "bad input"),
        (401, "no or bad token"),
        (403, "the token lacks the right"),
        (404, "not found (also another project's objects)"),
        (409, "conflict"),
        (500, "internal error"),
    )
}

router = APIRouter(prefix="/v1", responses=ERRORS)


def service(request: Request) -> ExportService:
    svc: ExportService = request.app.state.service
    return svc


def principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    token = None
    if authorization and authorization[:7].lower() == "bearer ":
        token = authorization[7:].strip()
    return service(request).authenticate(token)


Svc = Annotated[ExportService, Depends(service)]
Who = Annotated[Principal, Depends(principal)]


def base_url(request: Request) -> str:
    configured = request.app.state.runtime.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


def links(request: Request) -> LinkSigner:
    signer: LinkSigner = request.app.state.runtime.links
    return signer


def _task_response(request: Request, response: Response, task: Any) -> dict[str, Any]:
    wait = retry_after_seconds(task)
    if wait is not None:
        response.headers["Retry-After"] = str(wait)
    return task_json(task, base_url(request), links(request))


# ---- administration ----------------------------------------------------------------------


@router.post("/projects", status_code=201, tags=["admin"])
def create_project(body: ProjectRequest, svc: Svc, who: Who) -> dict[str, Any]:
    if not who.is_admin:
        raise Forbidden("only the administrator can create projects", "FORBIDDEN")
    return svc.create_project(body.project_id)


@router.get("/projects/{project_id}/settings", tags=["admin"])
def get_project_settings(project_id: str, svc: Svc, who: Who) -> dict[str, Any]:
    svc.authorize(who, project_id, Role.ADMIN)
    return svc.project_settings(project_id)


@router.put("/projects/{project_id}/settings", tags=["admin"])
def put_project_settings(
    project_id: str, body: ProjectSettingsRequest, svc: Svc, who: Who
) -> dict[str, Any]:
    """Replace the project's settings: notification defaults of its exports, and (server
    administrator only) the storage root its exports are written under."""
    svc.authorize(who, project_id, Role.ADMIN)
    return svc.set_project_settings(who, project_id, body)


@router.post("/projects/{project_id}/webhook-secret", status_code=201, tags=["admin"])
def rotate_webhook_secret(project_id: str, svc: Svc, who: Who) -> dict[str, Any]:
    """A new `whsec_...` secret signing the project's webhooks; shown only in this answer."""
    svc.authorize(who, project_id, Role.ADMIN)
    return svc.rotate_webhook_secret(project_id)


@router.post("/projects/{project_id}/tokens", status_code=201, tags=["admin"])
def create_token(project_id: str, body: TokenRequest, svc: Svc, who: Who) -> dict[str, Any]:
    svc.authorize(who, project_id, Role.ADMIN)
    return svc.create_token(project_id, body)


@router.post("/projects/{project_id}/datasets", status_code=201, tags=["datasets"])
def register_dataset(project_id: str, body: DatasetRequest, svc: Svc, who: Who) -> dict[str, Any]:
    svc.authorize(who, project_id, Role.ADMIN)
    return dataset_json(svc.register_dataset(project_id, body))


@router.get("/projects/{project_id}/datasets", tags=["datasets"])
def list_datasets(project_id: str, svc: Svc, who: Who) -> dict[str, Any]:
    svc.authorize(who, project_id, Role.READER)
    items = [dataset_json(d) for d in svc.list_datasets(project_id)]
    return {"datasets": items, "count": len(items)}


@router.get("/projects/{project_id}/datasets/{dataset_id}", tags=["datasets"])
def describe_dataset(project_id: str, dataset_id: str, svc: Svc, who: Who) -> dict[str, Any]:
    svc.authorize(who, project_id, Role.READER)
    return dataset_json(svc.get_dataset(project_id, dataset_id))


@router.delete("/projects/{project_id}/datasets/{dataset_id}", status_code=204, tags=["datasets"])
def delete_dataset(project_id: str, dataset_id: str, svc: Svc, who: Who) -> Response:
    svc.authorize(who, project_id, Role.ADMIN)
    svc.delete_dataset(project_id, dataset_id)
    return Response(status_code=204)


# ---- exports -------------------------------------------------------------------------------


@router.post("/projects/{project_id}/exports", status_code=202, tags=["exports"])
def create_export(
    project_id: str,
    body: ExportRequest,
    request: Request,
    response: Response,
    svc: Svc,
    who: Who,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> dict[str, Any]:
    """Start an export; answers at once (202) with the task. A repeated `Idempotency-Key`
    returns the task it created first."""
    svc.authorize(who, project_id, Role.WRITER)
    task, created = svc.submit(project_id, body, idempotency_key)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/projects/{project_id}/exports/{task.task_id}"
    return _task_response(request, response, task)


SortField = Literal["create_time", "update_time", "end_time", "file_name", "status", "task_id"]
assert set(SortField.__args__) == set(SORT_FIELDS)  # type: ignore[attr-defined]


@router.get("/projects/{project_id}/exports", tags=["exports"])
def list_exports(
    project_id: str,
    request: Request,
    svc: Svc,
    who: Who,
    status: Annotated[list[TaskStatus] | None, Query()] = None,
    file_name: Annotated[str | None, Query(max_length=255)] = None,
    file_name_prefix: Annotated[str | None, Query(max_length=255)] = None,
    task_id: Annotated[str | None, Query(max_length=64)] = None,
    dataset_id: Annotated[str | None, Query(max_length=200)] = None,
    is_download: bool | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    sort_field: SortField | None = None,
    sort_type: Literal["asc", "desc"] | None = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """List a project's exports, newest first unless `sort_field` (+ `sort_type`) says."""
    svc.authorize(who, project_id, Role.READER)
    if sort_type is not None and sort_field is None:
        raise BadRequest("sort_type must be used together with sort_field", "INVALID_SORT")
    q = TaskQuery(
        statuses=tuple(status or ()),
        file_name=file_name,
        file_name_prefix=file_name_prefix,
        task_id=task_id,
        dataset_id=dataset_id,
        is_download=is_download,
        created_from=created_from,
        created_to=created_to,
        sort_field=sort_field or "create_time",
        descending=(sort_type == "desc") if sort_field else True,
        offset=offset,
        limit=limit,
    )
    tasks, count = svc.list(project_id, q)
    base, signer = base_url(request), links(request)
    return {"export_tasks": [task_json(t, base, signer) for t in tasks], "count": count}


@router.get("/projects/{project_id}/exports/{task_id}", tags=["exports"])
def get_export(
    project_id: str, task_id: str, request: Request, response: Response, svc: Svc, who: Who
) -> dict[str, Any]:
    """The full status; unfinished tasks carry `Retry-After` (1 s growing to 30 s)."""
    svc.authorize(who, project_id, Role.READER)
    return _task_response(request, response, svc.get(project_id, task_id))


@router.post("/projects/{project_id}/exports/{task_id}/cancel", status_code=202, tags=["exports"])
def cancel_export(
    project_id: str, task_id: str, request: Request, response: Response, svc: Svc, who: Who
) -> dict[str, Any]:
    svc.authorize(who, project_id, Role.WRITER)
    return _task_response(request, response, svc.cancel(project_id, task_id))


@router.delete("/projects/{project_id}/exports/{task_id}", status_code=204, tags=["exports"])
def delete_export(project_id: str, task_id: str, svc: Svc, who: Who) -> Response:
    svc.authorize(who, project_id, Role.WRITER)
    svc.delete(project_id, task_id)
    return Response(status_code=204)


@router.get(
    "/projects/{project_id}/exports/{task_id}/download",
    tags=["exports"],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file"}},
)
def download_export(
    project_id: str,
    task_id: str,
    request: Request,
    svc: Svc,
    who: Who,
    name: Annotated[str | None, Query(max_length=255)] = None,
) -> Response:
    """The file: streamed (local storage) or a 307 to a freshly presigned URL (S3)."""
    svc.authorize(who, project_id, Role.READER)
    return file_response(request, svc.download(project_id, task_id, name))


@router.get(
    "/links/{project_id}/{task_id}/{name}",
    tags=["exports"],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file"}},
)
def follow_link(
    project_id: str,
    task_id: str,
    name: str,
    request: Request,
    svc: Svc,
    expires: Annotated[int | None, Query()] = None,
    signature: Annotated[str | None, Query(max_length=200)] = None,
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


@router.get("/projects/{project_id}/exports/{task_id}/manifest", tags=["exports"])
def export_manifest(project_id: str, task_id: str, svc: Svc, who: Who) -> Response:
    svc.authorize(who, project_id, Role.READER)
    return Response(svc.manifest(project_id, task_id), media_type="application/json")
