"""Task records for tests that need one without running an export."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from exportd.model import FileStatus, Stage, Task, TaskStatus
from exportd.model.plan import DatasetKind, ExportPlan, OutputSpec

T0 = datetime(2022, 3, 28, 0, 0, 0, 7000, tzinfo=UTC)


def make_plan(columns: tuple[str, ...] = ("a",), **over: Any) -> ExportPlan:
    """The plan of a CSV export of `columns` of a SQL dataset."""
    values: dict[str, Any] = dict(
        dataset_id="ds_1",
        dataset_kind=DatasetKind.SQL,
        source_columns=columns,
        output=OutputSpec(format="csv", prefix="exports/acme/t/"),
        fingerprint="x",
    )
    values.update(over)
    return ExportPlan(**values)


def make_task(**over: Any) -> Task:
    values: dict[str, Any] = dict(
        task_id="t" * 32,
        project_id="acme",
        dataset_id="ds_1",
        status=TaskStatus.PENDING,
        stage=Stage.NOT_STARTED,
        file_status=FileStatus.PREPARING,
        request={"dataset_id": "ds_1", "format": "csv"},
        plan=make_plan(),
        format="csv",
        file_name="out.csv",
        columns=["a"],
        parallelism=2,
        allow_partial=False,
        max_error_rate=1.0,
        timeout_seconds=None,
        expires_in=3600,
        create_time=T0,
        update_time=T0 + timedelta(seconds=5),
    )
    values.update(over)
    return Task(**values)
