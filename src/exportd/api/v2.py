"""Seed-compatible views (`/v2`): the endpoints of seeds 001, 003 and 004 in their documented
shapes, over the same tasks as the native API. The mapping is in `seed_mapping.py` and
explained in docs/api-mapping.md; these are only the routes and their response models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import BaseModel, Field

from exportd.api.deps import ProjectId, Svc, TaskId, Who, errors
from exportd.api.schemas import CurrentState
from exportd.api.seed_mapping import (
    Seed001Status,
    Seed004Status,
    seed001_view,
    seed003_view,
    seed004_filter,
    seed004_item,
)
from exportd.api.views import retry_after_seconds
from exportd.model import FileStatus, Role, Task, TaskKind, TaskStatus
from exportd.model.requests import NO_NUL
from exportd.store import TaskQuery, sort_order

router = APIRouter(prefix="/v2", tags=["seed-compatible"])

SEED_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
SEED_TIME_TEXT = "UTC, yyyy-MM-dd'T'HH:mm:ss.SSSZ rendered as 2022-03-28T00:00:00.000Z"


def _retry_after(response: Response, task: Task) -> None:
    wait = retry_after_seconds(task)
    if wait is not None:
        response.headers["Retry-After"] = str(wait)


# ---- seed 004: listing export tasks -------------------------------------------------------------


class ExportTaskItem(BaseModel):
    task_id: str = Field(description="ID of the export task.")
    file_name: str = Field(description="Name of the exported file.")
    status: Seed004Status = Field(description="CREATING, SUCCESS, FAIL, or EXPIRED.")
    fail_reason: str | None = Field(description="Task failure cause.")
    error_code: str | None = Field(description="Error code of a task failure.")
    create_time: str = Field(pattern=SEED_TIME, description=SEED_TIME_TEXT)
    end_time: str | None = Field(pattern=SEED_TIME, description=SEED_TIME_TEXT)
    is_download: bool = Field(description="Whether the file is downloaded.")
    currentState: CurrentState = Field(description="seed 000's stage")


class ExportTaskList(BaseModel):
    export_tasks: list[ExportTaskItem] = Field(description="Export task list.")
    count: int = Field(description="Total number of export tasks.")


Seed004Sort = Literal["create_time", "end_time", "file_name", "task_id"]


@router.get(
    "/{project_id}/export-tasks",
    response_model=ExportTaskList,
    responses=errors(400, 401, 404, 500),
    summary="Listing Export Tasks (seed 004)",
)
def list_export_tasks(
    project_id: ProjectId,
    svc: Svc,
    who: Who,
    file_name: Annotated[
        str | None, Query(pattern=NO_NUL, max_length=255, description="File name.")
    ] = None,
    task_id: Annotated[
        str | None, Query(pattern=NO_NUL, max_length=64, description="Task ID.")
    ] = None,
    status: Annotated[Seed004Status | None, Query(description="Export task status.")] = None,
    is_download: Annotated[
        bool, Query(description="Whether the file has been downloaded (default false).")
    ] = False,
    sort_field: Annotated[Seed004Sort | None, Query(description="Sorting field.")] = None,
    sort_type: Annotated[
        Literal["asc", "desc"] | None,
        Query(description="Sorting type (default asc); only together with sort_field (else 400)."),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000, description="Paging offset.")] = 0,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, 1-100.")] = 20,
) -> dict[str, Any]:
    """Seed 004's list. Without `sort_field`, newest first; ties break by task_id."""
    svc.authorize(who, project_id, Role.READER)
    sort_by, descending = sort_order(sort_field, sort_type)
    statuses, file_statuses = seed004_filter(status) if status else (None, None)
    q = TaskQuery(
        statuses=statuses,
        file_statuses=file_statuses,
        file_name=file_name,
        task_id=task_id,
        is_download=is_download,
        sort_field=sort_by,
        descending=descending,
        offset=offset,
        limit=limit,
        kind=TaskKind.EXPORT,  # seed 004 lists export tasks (imports: seed 001's view)
    )
    tasks, count = svc.list(project_id, q)
    return {"export_tasks": [seed004_item(t) for t in tasks], "count": count}


# ---- seed 003: status of a dataset export task --------------------------------------------------


class ExportParams(BaseModel):
    clear_hard_property: bool
    export_dataset_version_format: str | None
    export_dataset_version_name: str | None
    export_dest: Literal["DIR", "NEW_DATASET"]
    export_new_dataset_name: str | None
    export_new_dataset_work_path: str | None
    ratio_sample_usage: bool
    sample_state: str
    samples: list[str] | None
    search_conditions: list[dict[str, Any]] | None = Field(
        description="a samples export's SearchConditions, or an export's filter conditions "
        "(combined with OR), as given"
    )
    train_sample_ratio: str = Field(description="training share of a split, e.g. 0.80")


class DatasetExportTask(BaseModel):
    create_time: int = Field(description="Time when a task is created (epoch ms).")
    error_code: str | None
    error_msg: str | None
    export_format: int = Field(
        description="1: tree structure (a folder per label), 2: tile structure (flat files)."
    )
    export_params: ExportParams
    export_type: int = Field(
        description="0: labeled, 1: unlabeled, 2: all, 3: conditional search (a filter)."
    )
    finished_sample_count: int
    path: str = Field(description="Export output path, relative to the storage.")
    progress: float = Field(description="Percentage of current task progress.")
    status: TaskStatus = Field(description="Task status (exportd's lifecycle status).")
    task_id: str
    total_sample_count: int | None
    update_time: int = Field(description="Time when a task is updated (epoch ms).")
    version_format: Literal["Default", "CarbonData", "CSV"]
    version_id: str | None
    currentState: CurrentState = Field(description="seed 000's stage")


@router.get(
    "/{project_id}/datasets/{resource_id}/export-tasks/{task_id}",
    response_model=DatasetExportTask,
    responses=errors(400, 401, 403, 404, 500),
    summary="Querying the Status of a Dataset Export Task (seed 003)",
)
def get_dataset_export_task(
    project_id: ProjectId,
    resource_id: Annotated[
        str, Path(pattern=NO_NUL, min_length=1, max_length=200, description="dataset ID")
    ],
    task_id: TaskId,
    response: Response,
    svc: Svc,
    who: Who,
) -> dict[str, Any]:
    svc.authorize(who, project_id, Role.READER)
    task = svc.get_for_dataset(project_id, resource_id, task_id)
    _retry_after(response, task)
    return seed003_view(task)


# ---- seed 001: status of an import/export task --------------------------------------------------


class ResourceTaskStatus(BaseModel):
    id: str = Field(description="Record ID")
    resource_id: str = Field(description="ID of the resource export task")
    resource_type: str = Field(description="Resource type (DATASET)")
    action: Literal["EXPORT", "REPORT"] = Field(description="EXPORT, or REPORT for an import")
    file_name: str
    start_time: str | None = Field(pattern=SEED_TIME, description=SEED_TIME_TEXT)
    end_time: str | None = Field(pattern=SEED_TIME, description=SEED_TIME_TEXT)
    status: Seed001Status
    error_msg: str | None
    project_id: str
    domain_id: str | None = Field(description="id of the token that created the task")
    user_name: str | None = Field(description="name of the token that created the task")
    export_resources: str | None = Field(description="the exported dataset's id")
    import_body: str | None = Field(
        description="an import's request as submitted (JSON, secrets removed); blank for exports"
    )
    file_status: FileStatus
    currentState: CurrentState = Field(description="seed 000's stage")


@router.get(
    "/{project_id}/quality/resource/status/{resource_id}",
    response_model=ResourceTaskStatus,
    responses=errors(400, 401, 404, 500),
    summary="Obtaining the Status of an Import/Export Task (seed 001)",
)
def get_resource_status(
    project_id: ProjectId,
    resource_id: Annotated[
        str, Path(pattern=NO_NUL, min_length=1, max_length=64, description="the task ID")
    ],
    workspace: Annotated[
        str, Header(pattern=NO_NUL, min_length=1, max_length=64, description="workspace ID")
    ],
    response: Response,
    svc: Svc,
    who: Who,
) -> dict[str, Any]:
    """`workspace` is required as documented; exportd has no workspaces inside a project,
    so it does not narrow the lookup."""
    svc.authorize(who, project_id, Role.READER)
    task = svc.get(project_id, resource_id)
    _retry_after(response, task)
    return seed001_view(task)
