"""A samples dataset's samples: listed (filtered by label and state, paged), one
described, and counted (total, labelled, per label, per state)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from exportd.api.deps import DatasetId, ProjectId, Svc, Who, errors
from exportd.errors import NotFound
from exportd.model import Role
from exportd.model.requests import NO_NUL
from exportd.model.samples import Sample, SampleState
from exportd.sources.samples import counts

router = APIRouter(prefix="/v1", tags=["samples"])
READ_ERRORS = errors(400, 401, 404, 500)


class SampleList(BaseModel):
    samples: list[dict[str, Any]] = Field(description="the page of samples, in id order")
    count: int = Field(description="samples matching the filters")


class SampleCounts(BaseModel):
    total: int
    labelled: int
    unlabelled: int
    hard: int = Field(description="hard examples")
    labels: dict[str, int] = Field(description="samples per label")
    states: dict[str, int] = Field(description="samples per sample state (`none`: no state)")


def sample_json(s: Sample) -> dict[str, Any]:
    return {"name": s.name, **s.model_dump(mode="json")}


@router.get(
    "/projects/{project_id}/datasets/{dataset_id}/samples",
    response_model=SampleList,
    responses=READ_ERRORS,
)
def list_samples(
    project_id: ProjectId,
    dataset_id: DatasetId,
    svc: Svc,
    who: Who,
    label: Annotated[
        str | None, Query(pattern=NO_NUL, max_length=200, description="with this label")
    ] = None,
    state: Annotated[
        SampleState | None,
        Query(description="in this state (__ALL__: labelled, __NONE__: not labelled)"),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    svc.authorize(who, project_id, Role.READER)
    found = sorted(svc.samples(project_id, dataset_id).samples, key=lambda s: s.id)
    if label is not None:
        found = [s for s in found if any(lb.name == label for lb in s.labels)]
    if state is SampleState.ALL or state is SampleState.NONE:
        found = [s for s in found if s.labelled == (state is SampleState.ALL)]
    elif state is not None:
        found = [s for s in found if s.state is state]
    page = found[offset : offset + limit]
    return {"samples": [sample_json(s) for s in page], "count": len(found)}


@router.get(
    "/projects/{project_id}/datasets/{dataset_id}/samples-count",
    response_model=SampleCounts,
    responses=READ_ERRORS,
)
def count_samples(
    project_id: ProjectId, dataset_id: DatasetId, svc: Svc, who: Who
) -> dict[str, Any]:
    svc.authorize(who, project_id, Role.READER)
    return counts(svc.samples(project_id, dataset_id).samples)


@router.get(
    "/projects/{project_id}/datasets/{dataset_id}/samples/{sample_id:path}",
    responses=READ_ERRORS,
)
def describe_sample(
    project_id: ProjectId,
    dataset_id: DatasetId,
    sample_id: Annotated[str, Path(pattern=NO_NUL, min_length=1, max_length=400)],
    svc: Svc,
    who: Who,
) -> dict[str, Any]:
    svc.authorize(who, project_id, Role.READER)
    for s in svc.samples(project_id, dataset_id).samples:
        if s.id == sample_id:
            return sample_json(s)
    raise NotFound(f"sample {sample_id[:100]!r} not found", "SAMPLE_NOT_FOUND")
