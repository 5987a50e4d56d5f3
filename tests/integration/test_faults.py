"""Correctness under faults: a worker killed with SIGKILL mid-partition, cancel, timeout,
and failing partitions with and without allow_partial. All over real HTTP."""

from __future__ import annotations

import csv
import io
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import SOURCE_ROWS
from tests.support import FLIGHT_COLUMNS, Api, LiveServer, expected_cell

SLOW_QUERY = "SELECT f.*, nap(f.id, {every}) AS pad FROM flights f"
BOOM_QUERY = "SELECT f.*, 100 / (CASE WHEN f.id = 7 THEN 0 ELSE 1 END) AS boom FROM flights f"


def setup_project(server: LiveServer, source: str, **dataset: Any) -> Api:
    admin = server.client()
    token = admin.project("acme")
    admin.dataset("acme", kind="sql", url=source, key="id", **dataset)
    return server.client(token)


def files_on_disk(server: LiveServer, task_id: str) -> list[Path]:
    root = server.settings.data_dir / "files"
    return [p for p in root.rglob("*") if p.is_file() and task_id in str(p)]


def files_left(server: LiveServer, task_id: str, within: float = 30.0) -> list[Path]:
    """The task's files once its cleanup has had `within` seconds to run: a terminal
    status commits first, and the parts are deleted right after it."""
    deadline = time.monotonic() + within
    while (left := files_on_disk(server, task_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def csv_rows(data: bytes) -> Counter[tuple[str, ...]]:
    reader = csv.reader(io.StringIO(data.decode(), newline=""))
    next(reader)
    return Counter(tuple(r) for r in reader)


def pg_rows(url: str, columns: list[str], where: str = "") -> Counter[tuple[str, ...]]:
    with psycopg.connect(url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM flights {where}").fetchall()
    return Counter(tuple(expected_cell(v) for v in r) for r in rows)


def running_with_progress(task: dict[str, Any]) -> bool:
    return any(p["status"] == "RUNNING" and p["finished_count"] > 0 for p in task["partitions"])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_mid_partition_is_reclaimed_exactly_once(
    backend: str, pg_source: str, request: pytest.FixtureRequest, live_server: Any
) -> None:
    store_url = request.getfixturevalue("pg_database") if backend == "postgresql" else None
    # the API process runs no workers: all work happens in `exportd worker` processes
    server = live_server(store_url=store_url, workers=0, lease_seconds=2.0, max_attempts=3)
    api = setup_project(server, pg_source, name="slow", query=SLOW_QUERY.format(every=250))
    victim = server.start_worker(concurrency=2)

    # per_partition: the leases are what is tested here (under a snapshot, the killed
    # worker held it, and every partition is read again: tests/integration/test_keyless.py)
    task = api.export(
        "acme", dataset_id="slow", format="csv", parallelism=4, consistency="per_partition"
    )
    api.wait("acme", task["task_id"], timeout=60, until=running_with_progress)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    server.start_worker(concurrency=2)

    done = api.wait("acme", task["task_id"], timeout=180)
    assert done["status"] == "COMPLETED", done
    assert time.monotonic() - killed_at < 120
    # the killed worker's partitions were taken up again, as lost (not failed) tries
    assert max(p["lost_count"] for p in done["partitions"]) >= 1, done["partitions"]
    assert all(p["attempts"] == 1 for p in done["partitions"]), done["partitions"]
    assert done["finished_count"] == SOURCE_ROWS

    body = api.http.get(f"/v1/projects/acme/exports/{task['task_id']}/download").content
    got = csv_rows(body)
    assert sum(got.values()) == SOURCE_ROWS
    assert got == pg_rows(pg_source, [*FLIGHT_COLUMNS, "0 AS pad"])
    # abandoned attempts' parts are gone; only the file and its manifest remain
    names = sorted(p.name for p in files_on_disk(server, task["task_id"]))
    assert names == sorted([done["file_name"], "manifest.json"])


def test_cancel_while_running(pg_source: str, live_server: Any) -> None:
    server = live_server(workers=2)
    api = setup_project(server, pg_source, name="slow", query=SLOW_QUERY.format(every=100))
    task = api.export("acme", dataset_id="slow", parallelism=4)
    api.wait("acme", task["task_id"], timeout=60, until=running_with_progress)

    r = api.http.post(f"/v1/projects/acme/exports/{task['task_id']}/cancel")
    assert r.status_code == 202
    assert r.json()["status"] in ("CANCELING", "CANCELED")
    done = api.wait("acme", task["task_id"], timeout=60)

    assert done["status"] == "CANCELED"
    assert done["file_status"] == "FAILED" and done["files"] == []
    assert all(p["status"] in ("CANCELED", "DONE") for p in done["partitions"])
    assert files_on_disk(server, task["task_id"]) == []
    r = api.http.get(f"/v1/projects/acme/exports/{task['task_id']}/download")
    assert r.status_code == 409 and r.json()["error_code"] == "FILE_NOT_READY"
    # a terminal status never changes: canceling again is a conflict
    r = api.http.post(f"/v1/projects/acme/exports/{task['task_id']}/cancel")
    assert r.status_code == 409 and r.json()["error_code"] == "TASK_ALREADY_FINISHED"


def test_timeout(pg_source: str, live_server: Any) -> None:
    server = live_server(workers=2)
    api = setup_project(server, pg_source, name="slow", query=SLOW_QUERY.format(every=100))
    task = api.export("acme", dataset_id="slow", parallelism=2, timeout_seconds=1)
    done = api.wait("acme", task["task_id"], timeout=60)

    assert done["status"] == "TIMEOUT"
    assert done["error_code"] == "TIMEOUT" and "1 s" in done["error_msg"]
    assert done["files"] == [] and done["file_status"] == "FAILED"
    # the workers notice, stop and their parts are cleaned up
    assert files_left(server, task["task_id"]) == []
    assert api.task("acme", task["task_id"])["status"] == "TIMEOUT"


def test_failing_partition_fails_the_task(pg_source: str, live_server: Any) -> None:
    server = live_server(workers=2, max_attempts=2)
    api = setup_project(server, pg_source, name="boom", query=BOOM_QUERY)
    task = api.export("acme", dataset_id="boom", parallelism=4)
    done = api.wait("acme", task["task_id"], timeout=60)

    assert done["status"] == "FAILED"
    assert done["error_code"] == "PARTITIONS_FAILED"
    assert "allow_partial" in done["error_msg"]
    [bad] = [p for p in done["partitions"] if p["status"] == "FAILED"]
    assert bad["index"] == 0 and bad["attempts"] == 2
    assert bad["error_code"] == "SOURCE_QUERY_FAILED" and "division by zero" in bad["error_msg"]
    assert done["files"] == [] and done["file_status"] == "FAILED"
    # the cleanup follows the terminal move's commit: the parts go right after
    assert files_left(server, task["task_id"]) == []


def test_failing_partition_with_allow_partial(pg_source: str, live_server: Any) -> None:
    """The failing row is isolated (item-level partial success, bisection): its partition
    commits every other row, and the row is one failed item with its key."""
    server = live_server(workers=2, max_attempts=2)
    api = setup_project(server, pg_source, name="boom", query=BOOM_QUERY)
    task = api.export("acme", dataset_id="boom", parallelism=4, allow_partial=True)
    done = api.wait("acme", task["task_id"], timeout=60)

    assert done["status"] == "COMPLETED_WITH_ERRORS", done
    assert done["file_status"] == "GENERATED"
    [item] = done["failed_items"]
    assert item["partition"] == 0 and item["key"] == 7 and "division by zero" in item["error_msg"]
    assert [p["status"] for p in done["partitions"]] == ["DONE"] * 4
    assert done["failed_count"] == 1 and done["finished_count"] == SOURCE_ROWS - 1
    assert done["success_rate"] == int(10000 * (SOURCE_ROWS - 1) / SOURCE_ROWS) / 100

    body = api.http.get(f"/v1/projects/acme/exports/{task['task_id']}/download").content
    got = csv_rows(body)
    assert sum(got.values()) == done["finished_count"]
    manifest = api.http.get(f"/v1/projects/acme/exports/{task['task_id']}/manifest").json()
    assert manifest["status"] == "COMPLETED_WITH_ERRORS"
    assert manifest["partitions"][0]["status"] == "DONE"
    assert manifest["failed_rows"] == done["failed_count"] == 1
    assert [i["key"] for i in manifest["failed_items"]] == [7]


def test_finishing_that_keeps_failing_ends_failed(pg_source: str, live_server: Any) -> None:
    """The output cannot be written (a directory squats on its path): the coordinator's
    retries run out and the task ends FAILED with the reason, instead of RUNNING forever."""
    server = live_server(workers=2, max_attempts=2)
    api = setup_project(server, pg_source, name="slow", query=SLOW_QUERY.format(every=1000))
    task = api.export("acme", dataset_id="slow", parallelism=2, file_name="out.csv")
    squatter = server.settings.data_dir / "files" / "exports" / "acme" / task["task_id"] / "out.csv"
    squatter.mkdir(parents=True)
    done = api.wait("acme", task["task_id"], timeout=90)

    assert done["status"] == "FAILED", done
    assert done["error_code"] == "COORDINATOR_FAILED"
    assert "2 times" in done["error_msg"] and "IsADirectoryError" in done["error_msg"]
    assert done["file_status"] == "FAILED" and done["files"] == []
    assert all(p["status"] == "DONE" for p in done["partitions"])


def test_a_part_cut_short_fails_the_assembly_not_the_file(pg_source: str, live_server: Any) -> None:
    """Parts are not fsynced: a part an OS crash cut short after its commit must fail the
    assembly (its size differs from its committed index), never make a shorter file."""
    server = live_server(workers=1, max_attempts=2)  # one thread: partitions one by one
    api = setup_project(server, pg_source, name="slow", query=SLOW_QUERY.format(every=1000))
    task = api.export("acme", dataset_id="slow", parallelism=2, file_name="out.csv")
    parts = server.settings.data_dir / "files" / "parts" / task["task_id"]
    deadline = time.monotonic() + 60
    while True:  # partition 0 is committed while partition 1 still runs
        t = api.task("acme", task["task_id"])
        if [p["status"] for p in t["partitions"]] == ["DONE", "RUNNING"]:
            break
        assert time.monotonic() < deadline, t
        time.sleep(0.05)
    [segment] = [p for p in parts.glob("00000-*/s00000.csv")]
    with open(segment, "r+b") as fh:  # what a crash before write-back can leave
        fh.truncate(segment.stat().st_size // 2)

    done = api.wait("acme", task["task_id"], timeout=90)
    assert done["status"] == "FAILED", done
    assert done["error_code"] == "COORDINATOR_FAILED"
    assert "its index says" in done["error_msg"]
    assert done["files"] == []
