"""Graceful shutdown of `exportd worker` processes (SIGTERM): no more claims, the work in
hand commits within the grace period or its lease is handed back at once (no wait for
its expiry, no attempt or loss counted), and the process exits."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from exportd.model import Partition, PartitionStatus
from tests.conftest import SOURCE_ROWS
from tests.integration.test_faults import SLOW_QUERY, csv_rows, pg_rows, setup_project
from tests.support import FLIGHT_COLUMNS, Api, LiveServer

EXIT_TIMEOUT = 60.0  # a bound for the test only: the worker's own grace is far shorter


def held_by(server: LiveServer, task_id: str, pid: int) -> Partition | None:
    """The partition the worker process `pid` runs and has made progress on, if any."""
    task = server.app.state.runtime.store.get_task("acme", task_id)
    for p in task.partitions:
        owner = p.lease_owner or ""
        if p.status is PartitionStatus.RUNNING and f":{pid}:" in owner and p.finished_count:
            return p
    return None


def wait_for(api: Api, task_id: str, server: LiveServer, pid: int) -> Partition:
    found: list[Partition] = []

    def holds(_task: dict[str, Any]) -> bool:
        p = held_by(server, task_id, pid)
        found[:] = [p] if p else []
        return p is not None

    api.wait("acme", task_id, timeout=60, until=holds)
    return found[0]


def partition(server: LiveServer, task_id: str, index: int) -> Partition:
    task = server.app.state.runtime.store.get_task("acme", task_id)
    return next(p for p in task.partitions if p.index == index)


def terminate(proc: subprocess.Popen[bytes]) -> int:
    os.kill(proc.pid, signal.SIGTERM)
    return proc.wait(timeout=EXIT_TIMEOUT)


def check_exactly_once(api: Api, pg_source: str, task_id: str) -> dict[str, Any]:
    done = api.wait("acme", task_id, timeout=180)
    assert done["status"] == "COMPLETED", done
    assert done["finished_count"] == SOURCE_ROWS
    # nothing was counted against the partitions: no failed try, no lost worker
    assert all(p["attempts"] == 1 for p in done["partitions"]), done["partitions"]
    assert all(p["lost_count"] == 0 for p in done["partitions"]), done["partitions"]
    body = api.http.get(f"/v1/projects/acme/exports/{task_id}/download").content
    got = csv_rows(body)
    assert sum(got.values()) == SOURCE_ROWS
    assert got == pg_rows(pg_source, [*FLIGHT_COLUMNS, "0 AS pad"])
    return done


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigterm_hands_the_partition_back_at_once(
    backend: str, pg_source: str, request: pytest.FixtureRequest, live_server: Any
) -> None:
    store_url = request.getfixturevalue("pg_database") if backend == "postgresql" else None
    # a long lease: a partition taken up again before it expires was handed back, not lost
    server = live_server(
        store_url=store_url,
        workers=0,
        lease_seconds=60.0,
        heartbeat_seconds=0.3,
        shutdown_grace_seconds=0.5,
    )
    api = setup_project(server, pg_source, name="slow", query=SLOW_QUERY.format(every=100))
    first = server.start_worker(concurrency=1)
    task = api.export("acme", dataset_id="slow", format="csv", parallelism=4)
    held = wait_for(api, task["task_id"], server, first.pid)
    assert held.lease_expires_at is not None

    assert terminate(first) == 0
    # handed back at once: PENDING, its try given back, no loss counted
    back = partition(server, task["task_id"], held.index)
    assert back.status is PartitionStatus.PENDING, back
    assert (back.attempts, back.lost_count, back.lease_token) == (0, 0, None), back

    second = server.start_worker(concurrency=2)
    retaken = back
    deadline = time.monotonic() + EXIT_TIMEOUT
    while retaken.status is PartitionStatus.PENDING and time.monotonic() < deadline:
        time.sleep(0.05)
        retaken = partition(server, task["task_id"], held.index)
    assert retaken.status is not PartitionStatus.PENDING, retaken
    assert datetime.now(UTC) < held.lease_expires_at
    assert retaken.lease_token != held.lease_token

    check_exactly_once(api, pg_source, task["task_id"])
    assert terminate(second) == 0


def test_sigterm_lets_the_partition_in_hand_commit_within_the_grace(
    pg_source: str, live_server: Any
) -> None:
    server = live_server(
        workers=0, lease_seconds=60.0, heartbeat_seconds=0.3, shutdown_grace_seconds=60.0
    )
    api = setup_project(server, pg_source, name="slow", query=SLOW_QUERY.format(every=250))
    first = server.start_worker(concurrency=1)
    task = api.export("acme", dataset_id="slow", format="csv", parallelism=4)
    held = wait_for(api, task["task_id"], server, first.pid)

    assert terminate(first) == 0
    # it finished and committed its partition, and claimed no other
    task_now = server.app.state.runtime.store.get_task("acme", task["task_id"])
    mine = [p for p in task_now.partitions if f":{first.pid}:" in (p.lease_owner or "")]
    assert [(p.index, p.status) for p in mine] == [(held.index, PartitionStatus.DONE)], mine

    server.start_worker(concurrency=2)
    check_exactly_once(api, pg_source, task["task_id"])
