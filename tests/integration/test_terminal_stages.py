"""The stage of a terminal task or partition is the last stage it actually reached (see
docs/api-mapping.md, "The stage of a terminal task"): a FAILED, TIMEOUT or CANCELED
export never shows stage 70 or 80 unless it got there, and a partition never shows a
stage its attempt did not run. Over real HTTP."""

from __future__ import annotations

from typing import Any

from tests.integration.test_faults import (
    BOOM_QUERY,
    SLOW_QUERY,
    running_with_progress,
    setup_project,
)


def _stage(item: dict[str, Any]) -> int:
    return int(item["current_state"]["status_id"])


def _partitions_true(done: dict[str, Any]) -> None:
    """DONE partitions at 90; a stopped one at the stage its attempt reached: 0 if it
    never ran, 60 if it was exporting; none beyond the export."""
    for p in done["partitions"]:
        if p["status"] == "DONE":
            assert _stage(p) == 90, p
        else:
            assert _stage(p) in (0, 60), p
            if p["status"] == "FAILED" or p["finished_count"]:
                assert _stage(p) == 60, p


def test_failed_partitions_leave_the_task_at_the_export_stage(
    pg_source: str, live_server: Any
) -> None:
    server = live_server(workers=2, max_attempts=1)
    api = setup_project(server, pg_source, name="boom", query=BOOM_QUERY)
    task = api.export("acme", dataset_id="boom", parallelism=4)
    done = api.wait("acme", task["task_id"], timeout=60)
    assert done["status"] == "FAILED" and done["error_code"] == "PARTITIONS_FAILED"
    # it never assembled a file nor wrote a manifest: 60, not 70 or 80
    assert _stage(done) == 60, done["current_state"]
    _partitions_true(done)
    assert any(p["status"] == "FAILED" for p in done["partitions"])


def test_timeout_and_cancel_keep_the_stage_reached(pg_source: str, live_server: Any) -> None:
    server = live_server(workers=2)
    api = setup_project(server, pg_source, name="slow", query=SLOW_QUERY.format(every=100))
    timed = api.export("acme", dataset_id="slow", parallelism=4, timeout_seconds=1)
    done = api.wait("acme", timed["task_id"], timeout=60)
    assert done["status"] == "TIMEOUT"
    assert _stage(done) in (10, 60), done["current_state"]  # planning or exporting
    _partitions_true(done)

    canceled = api.export("acme", dataset_id="slow", parallelism=4)
    api.wait("acme", canceled["task_id"], timeout=60, until=running_with_progress)
    api.http.post(f"/v1/projects/acme/exports/{canceled['task_id']}/cancel")
    done = api.wait("acme", canceled["task_id"], timeout=60)
    assert done["status"] == "CANCELED"
    assert _stage(done) == 60, done["current_state"]
    _partitions_true(done)


def test_a_completed_export_ends_at_90(pg_source: str, live_server: Any) -> None:
    server = live_server(workers=2)
    api = setup_project(server, pg_source, name="all", query="SELECT * FROM flights")
    for split in ({}, {"max_rows_per_file": 50000}):
        task = api.export("acme", dataset_id="all", parallelism=2, **split)
        done = api.wait("acme", task["task_id"], timeout=120)
        assert done["status"] == "COMPLETED", done
        assert _stage(done) == 90 and all(_stage(p) == 90 for p in done["partitions"])
