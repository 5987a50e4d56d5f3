"""The native -> seed mappings are pure functions: checked here over every status, and
their output checked against the response models the OpenAPI document shows."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from exportd.api.schemas import FileView, PartitionView, TaskView
from exportd.api.seed_mapping import (
    SEED002_TERMINAL,
    Seed001Status,
    Seed002Status,
    Seed004Status,
    StatusFilter,
    current_state,
    epoch_ms,
    export_params,
    search_conditions,
    seed001_status,
    seed001_view,
    seed002_status,
    seed003_view,
    seed004_filter,
    seed004_item,
    seed004_status,
    seed_time,
    statuses_for_filter,
    version_format,
)
from exportd.api.v2 import DatasetExportTask, ExportTaskItem, ResourceTaskStatus
from exportd.api.views import retry_after_seconds, task_json
from exportd.model import (
    ACTIVE_STATUSES,
    STAGE_TEXTS,
    FileRecord,
    FileStatus,
    Partition,
    PartitionStatus,
    Stage,
    TaskStatus,
)
from exportd.model.plan import OutputSpec
from tests.records import T0, make_plan, make_task

# ---- times ------------------------------------------------------------------------------


def test_seed_time_is_utc_with_milliseconds_and_z() -> None:
    assert seed_time(T0) == "2022-03-28T00:00:00.007Z"
    east = datetime(2022, 3, 28, 8, 30, 1, 999999, tzinfo=timezone(timedelta(hours=8)))
    assert seed_time(east) == "2022-03-28T00:30:01.999Z"
    assert seed_time(None) is None
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", seed_time(datetime.now(UTC)) or ""
    )


def test_epoch_ms() -> None:
    assert epoch_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert epoch_ms(datetime(2020, 11, 23, 3, 50, 24, 662000, tzinfo=UTC)) == 1606103424662
    assert epoch_ms(None) is None


# ---- seed 000 -----------------------------------------------------------------------------

SEED000 = {
    0: "Not started yet...",
    10: "Getting total...",
    20: "Creating headers for CSV file...",
    30: "Merging headers for CSV file...",
    40: "Wait till parallel tasks create headers for CSV file ...",
    50: "Wait till master task merge all headers for CSV file ...",
    60: "Exporting...",
    70: "Completing upload",
    80: "Writing manifest, preparing urls, sending emails...",
    90: "Completed",
}


@pytest.mark.parametrize("stage", list(Stage))
def test_current_state_is_seed_000_table(stage: Stage) -> None:
    assert current_state(stage) == {"statusId": int(stage), "status": SEED000[int(stage)]}


def test_stage_texts_are_seed_000s() -> None:
    assert {int(s): s.text for s in Stage} == SEED000
    assert len(STAGE_TEXTS) == 10


def test_every_task_representation_carries_current_state() -> None:
    task = make_task(status=TaskStatus.RUNNING, stage=Stage.EXPORTING)
    want = {"statusId": 60, "status": "Exporting..."}
    assert task_json(task)["currentState"] == want
    assert seed004_item(task)["currentState"] == want
    assert seed003_view(task)["currentState"] == want
    assert seed001_view(task)["currentState"] == want


# ---- seed 002 -----------------------------------------------------------------------------


def test_seed002_terminal_set_matches_native_terminal_statuses() -> None:
    for status in TaskStatus:
        assert (seed002_status(status) in SEED002_TERMINAL) == status.is_terminal, status


def test_status_filter_accepts_native_and_seed002_values() -> None:
    assert {s.value for s in StatusFilter} == {s.value for s in TaskStatus} | {
        s.value for s in Seed002Status
    }
    for status in TaskStatus:
        assert statuses_for_filter(status.value) == (status,)
    assert set(statuses_for_filter("IN_PROGRESS")) == {TaskStatus.RUNNING, TaskStatus.CANCELING}
    assert statuses_for_filter("PROCESSING") == statuses_for_filter("IN_PROGRESS")
    for value in ("UNKNOWN", "SKIPPED", "DRAFT", "ACTIVE", "ARCHIVED", "SUSPENDED"):
        assert statuses_for_filter(value) == ()


def test_retry_after_doubles_from_1_to_30_seconds_with_age() -> None:
    task = make_task(status=TaskStatus.RUNNING)
    waits = [retry_after_seconds(task, T0 + timedelta(seconds=s)) for s in range(0, 200, 5)]
    assert waits[0] == 1 and waits[-1] == 30
    assert all(a <= b for a, b in itertools.pairwise(waits))
    assert sorted(set(waits)) == [1, 2, 4, 8, 16, 30]
    assert retry_after_seconds(task, T0 + timedelta(days=3)) == 30
    assert retry_after_seconds(task, T0 - timedelta(seconds=5)) == 1  # clock skew
    for status in TaskStatus:
        t = make_task(status=status)
        assert (retry_after_seconds(t, T0) is None) == status.is_terminal


def test_partial_success_lists_successful_and_failed_items_with_rate() -> None:
    parts = [
        Partition("t", 0, PartitionStatus.DONE, Stage.COMPLETED, {}, finished_count=10),
        Partition(
            "t",
            1,
            PartitionStatus.FAILED,
            Stage.EXPORTING,
            {},
            error_code="SOURCE_QUERY_FAILED",
            error_msg="division by zero",
        ),
        Partition("t", 2, PartitionStatus.DONE, Stage.COMPLETED, {}, finished_count=7),
        Partition("t", 3, PartitionStatus.DONE, Stage.COMPLETED, {}, finished_count=3),
    ]
    task = make_task(
        status=TaskStatus.COMPLETED_WITH_ERRORS, stage=Stage.COMPLETED, partitions=parts
    )
    body = task_json(task)
    assert body["successful_items"] == [
        {"partition": 0, "rows": 10},
        {"partition": 2, "rows": 7},
        {"partition": 3, "rows": 3},
    ]
    assert body["failed_items"] == [
        {"partition": 1, "error_code": "SOURCE_QUERY_FAILED", "error_msg": "division by zero"}
    ]
    assert body["success_rate"] == 75.0
    assert body["is_terminal"] is True and body["retry_after"] is None


def test_task_json_fields_are_exactly_the_documented_model() -> None:
    """A field added to the view without the model would be silently dropped."""
    files = [FileRecord("t", "out.csv", "k", 1, 2, "0" * 64, "text/csv")]
    parts = [Partition("t", 0, PartitionStatus.DONE, Stage.COMPLETED, {}, finished_count=1)]
    body = task_json(make_task(files=files, partitions=parts), "http://x")
    assert set(body) == set(TaskView.model_fields)
    assert set(body["partitions"][0]) == set(PartitionView.model_fields)
    assert set(body["files"][0]) == set(FileView.model_fields)
    TaskView.model_validate(body)
    assert "_fingerprint" not in body["request"]


# ---- seed 004 -----------------------------------------------------------------------------


def test_seed004_status_of_every_native_status() -> None:
    for status in ACTIVE_STATUSES:
        assert seed004_status(status, FileStatus.PREPARING) is Seed004Status.CREATING
    done = FileStatus.GENERATED
    assert seed004_status(TaskStatus.COMPLETED, done) is Seed004Status.SUCCESS
    assert seed004_status(TaskStatus.COMPLETED_WITH_ERRORS, done) is Seed004Status.SUCCESS
    for status in (TaskStatus.FAILED, TaskStatus.CANCELED, TaskStatus.TIMEOUT):
        assert seed004_status(status, FileStatus.FAILED) is Seed004Status.FAIL
    assert seed004_status(TaskStatus.COMPLETED, FileStatus.DELETED) is Seed004Status.EXPIRED


@pytest.mark.parametrize("wanted", list(Seed004Status))
def test_seed004_filter_selects_exactly_the_tasks_shown_with_that_status(
    wanted: Seed004Status,
) -> None:
    statuses, file_statuses = seed004_filter(wanted)
    for status, file_status in itertools.product(TaskStatus, FileStatus):
        selected = status in statuses and (file_statuses is None or file_status in file_statuses)
        if status in ACTIVE_STATUSES and file_status is FileStatus.DELETED:
            continue  # cannot happen: files are deleted only once a task ended
        assert selected == (seed004_status(status, file_status) is wanted), (status, file_status)


def test_seed004_item_fields() -> None:
    task = make_task(
        status=TaskStatus.FAILED,
        file_status=FileStatus.FAILED,
        error_code="SOURCE_UNAVAILABLE",
        error_msg="no such table: flights",
        end_time=T0 + timedelta(seconds=1, milliseconds=250),
        is_download=False,
    )
    item = seed004_item(task)
    assert item == {
        "task_id": task.task_id,
        "file_name": "out.csv",
        "status": "FAIL",
        "fail_reason": "no such table: flights",
        "error_code": "SOURCE_UNAVAILABLE",
        "create_time": "2022-03-28T00:00:00.007Z",
        "end_time": "2022-03-28T00:00:01.257Z",
        "is_download": False,
        "currentState": {"statusId": 0, "status": "Not started yet..."},
    }
    ExportTaskItem.model_validate(item)


# ---- seed 003 -----------------------------------------------------------------------------


def test_search_conditions_are_the_request_filter_as_an_or_list() -> None:
    one = {"origin": {"eq": "JFK"}}
    assert search_conditions({}) is None
    assert search_conditions({"filter": one}) == [one]
    assert search_conditions({"filter": [one, {"id": {"in": [1, 2]}}]}) == [
        one,
        {"id": {"in": [1, 2]}},
    ]
    assert export_params({"filter": one})["search_conditions"] == [one]
    assert export_params({})["export_dest"] == "DIR"


def test_version_format() -> None:
    assert version_format("csv") == "CSV"
    assert version_format("jsonl") == "Default"


def test_seed003_view_fields() -> None:
    cond = [{"origin": {"eq": "JFK"}, "dep_delay": {"gt": 10}}]
    task = make_task(
        status=TaskStatus.RUNNING,
        stage=Stage.EXPORTING,
        request={"dataset_id": "ds_1", "filter": cond},
        total_count=200,
        finished_count=50,
        progress=25.0,
    )
    view = seed003_view(task)
    assert view["create_time"] == epoch_ms(T0) and isinstance(view["create_time"], int)
    assert view["update_time"] == epoch_ms(T0) + 5000
    assert view["progress"] == 25.0 and isinstance(view["progress"], float)
    assert view["finished_sample_count"] == 50 and view["total_sample_count"] == 200
    assert view["export_type"] == 3 and view["export_format"] == 2
    assert view["export_params"]["search_conditions"] == cond
    assert view["status"] == "RUNNING" and view["version_format"] == "CSV"
    assert view["path"] == "/" + task.plan.output.prefix
    assert view["task_id"] == task.task_id and view["version_id"] is None
    assert view["error_code"] is None and view["error_msg"] is None
    DatasetExportTask.model_validate(view)
    assert seed003_view(make_task())["export_type"] == 2


# ---- seed 001 -----------------------------------------------------------------------------


def test_seed001_status_of_every_native_status() -> None:
    want = {
        TaskStatus.PENDING: Seed001Status.WAITING,
        TaskStatus.RUNNING: Seed001Status.RUNNING,
        TaskStatus.CANCELING: Seed001Status.RUNNING,
        TaskStatus.COMPLETED: Seed001Status.SUCCESS,
        TaskStatus.COMPLETED_WITH_ERRORS: Seed001Status.SUCCESS,
        TaskStatus.FAILED: Seed001Status.FAILED,
        TaskStatus.CANCELED: Seed001Status.FAILED,
        TaskStatus.TIMEOUT: Seed001Status.TIMEOUT,
    }
    assert {s: seed001_status(s) for s in TaskStatus} == want


def test_seed001_view_fields() -> None:
    task = make_task(
        status=TaskStatus.TIMEOUT,
        file_status=FileStatus.FAILED,
        start_time=T0,
        end_time=T0 + timedelta(minutes=1),
        error_msg="export exceeded its time limit of 60 s (timeout_seconds)",
        created_by="tok123",
        created_by_name="nightly",
    )
    view = seed001_view(task)
    assert view == {
        "id": task.task_id,
        "resource_id": task.task_id,
        "resource_type": "DATASET",
        "action": "EXPORT",
        "file_name": "out.csv",
        "start_time": "2022-03-28T00:00:00.007Z",
        "end_time": "2022-03-28T00:01:00.007Z",
        "status": "TIMEOUT",
        "error_msg": "export exceeded its time limit of 60 s (timeout_seconds)",
        "project_id": "acme",
        "domain_id": "tok123",
        "user_name": "nightly",
        "export_resources": "ds_1",
        "import_body": "",
        "file_status": "FAILED",
        "currentState": {"statusId": 0, "status": "Not started yet..."},
    }
    ResourceTaskStatus.model_validate(view)


def test_seed003_path_is_where_the_files_are_destination_included() -> None:
    plan = make_plan(output=OutputSpec(format="csv", prefix="exports/acme/daily/2026/t/"))
    assert seed003_view(make_task(plan=plan))["path"] == "/exports/acme/daily/2026/t/"


def test_a_split_export_names_a_file_it_wrote() -> None:
    files = [
        FileRecord("t", name, "k/" + name, 1, 2, "0" * 64, "text/csv")
        for name in ("out-00001.csv", "out-00002.csv")
    ]
    files.append(
        FileRecord("t", "manifest.json", "k/m", 0, 2, "0" * 64, "application/json", kind="manifest")
    )
    done = make_task(status=TaskStatus.COMPLETED, stage=Stage.COMPLETED, files=files)
    assert task_json(done)["file_name"] == "out-00001.csv"
    assert seed004_item(done)["file_name"] == "out-00001.csv"
    assert task_json(make_task())["file_name"] == "out.csv"  # nothing written yet: the plan's


@pytest.mark.parametrize("status", [TaskStatus.FAILED, TaskStatus.TIMEOUT, TaskStatus.CANCELED])
def test_a_task_that_delivered_nothing_claims_no_item(status: TaskStatus) -> None:
    parts = [Partition("t", 0, PartitionStatus.DONE, Stage.COMPLETED, {}, finished_count=10)]
    task = make_task(status=status, stage=Stage.COMPLETED, partitions=parts, finished_count=10)
    body = task_json(task)
    assert body["successful_items"] == [] and body["success_rate"] == 0.0
    assert seed003_view(task)["finished_sample_count"] == 0
