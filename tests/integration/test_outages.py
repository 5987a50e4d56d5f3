"""Outages of the store and of a source, and lost workers, with real `exportd worker`
processes: the store (PostgreSQL) is reached through a FaultyProxy that the test cuts,
or is a PostgreSQL cluster of the test's own that it stops and starts; a source likewise
behind a proxy. Tasks must end exact, without failed attempts from the outage."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import SOURCE_ROWS
from tests.integration.test_faults import SLOW_QUERY, csv_rows, pg_rows, running_with_progress
from tests.netfault import FaultyProxy
from tests.support import FLIGHT_COLUMNS, Api, LiveServer, free_port

CLUSTER_VERSION = "15"


def through(proxy: FaultyProxy, url: str) -> str:
    """`url` (a PostgreSQL URL on the shared server) reached through `proxy`."""
    return url.replace(":5432/", f":{proxy.port}/")


def setup_project(server: LiveServer, source: str, query: str) -> Api:
    admin = server.client()
    token = admin.project("acme")
    admin.dataset("acme", kind="sql", url=source, key="id", name="slow", query=query)
    return server.client(token)


def exact(api: Api, task_id: str, source: str) -> None:
    body = api.http.get(f"/v1/projects/acme/exports/{task_id}/download").content
    got = csv_rows(body)
    assert sum(got.values()) == SOURCE_ROWS
    assert got == pg_rows(source, [*FLIGHT_COLUMNS, "0 AS pad"])


def no_failed_try(task: dict[str, Any]) -> None:
    """Every partition DONE at its first try, none reclaimed as lost."""
    tries = [(p["status"], p["attempts"], p["lost_count"]) for p in task["partitions"]]
    assert tries == [("DONE", 1, 0)] * len(tries), task["partitions"]


@pytest.fixture
def store_proxy() -> Iterator[FaultyProxy]:
    proxy = FaultyProxy("127.0.0.1", 5432)
    yield proxy
    proxy.close()


def test_store_down_for_30_s_mid_export(
    pg_source: str, pg_database: str, store_proxy: FaultyProxy, live_server: Any
) -> None:
    """The store unreachable for 30 s while partitions run: the workers ride it out
    (leases lapse, but the alive workers renew them when it is back and are not reaped),
    the task ends COMPLETED and exact with no failed try; meanwhile the API answers 503
    STORE_UNAVAILABLE with Retry-After and /readyz 503, /healthz stays 200."""
    server = live_server(store_url=through(store_proxy, pg_database), workers=0, lease_seconds=2)
    api = setup_project(server, pg_source, SLOW_QUERY.format(every=250))
    server.start_worker(concurrency=2)
    server.start_worker(concurrency=2)
    task_id = api.export("acme", dataset_id="slow", format="csv", parallelism=6)["task_id"]
    api.wait("acme", task_id, timeout=60, until=running_with_progress)

    store_proxy.cut()
    outage_ends = time.monotonic() + 30
    answers = []
    while time.monotonic() < outage_ends:
        r = api.http.get(f"/v1/projects/acme/exports/{task_id}")
        ready = api.http.get("/readyz")
        alive = api.http.get("/healthz")
        answers.append(
            (r.status_code, r.json()["error_code"], ready.status_code, alive.status_code)
        )
        assert r.headers["Retry-After"].isdigit() and ready.headers["Retry-After"].isdigit()
        assert ready.json()["error_code"] == "STORE_UNAVAILABLE"
        time.sleep(2)
    assert set(answers) == {(503, "STORE_UNAVAILABLE", 503, 200)}
    store_proxy.restore()

    assert api.http.get("/readyz").status_code == 200
    done = api.wait("acme", task_id, timeout=180)
    assert done["status"] == "COMPLETED", done
    no_failed_try(done)
    exact(api, task_id, pg_source)


# ---- a PostgreSQL cluster of the test's own, stopped and started mid-export -----------


@pytest.fixture
def own_cluster() -> Iterator[tuple[str, str]]:
    """(cluster name, URL of an empty database in it) on a free port; dropped after."""
    if shutil.which("pg_createcluster") is None or os.geteuid() != 0:
        pytest.skip("needs pg_createcluster and root to run a PostgreSQL cluster of its own")
    name, port = f"exportd_t{uuid.uuid4().hex[:8]}", free_port()
    subprocess.run(
        ["pg_createcluster", CLUSTER_VERSION, name, "-p", str(port), "--start",
         "--", "--auth-local=trust", "--auth-host=trust"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/store"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres") as conn:
            conn.autocommit = True
            conn.execute("CREATE DATABASE store")
        yield name, url
    finally:
        subprocess.run(
            ["pg_dropcluster", "--stop", CLUSTER_VERSION, name], check=False, capture_output=True
        )


def pg_ctl(name: str, action: str) -> None:
    subprocess.run(["pg_ctlcluster", CLUSTER_VERSION, name, action], check=True, timeout=120)


def test_store_restarted_mid_export(
    pg_source: str, own_cluster: tuple[str, str], live_server: Any
) -> None:
    """The store's server stopped (every connection terminated) and started again 10 s
    later, mid-export: the task ends COMPLETED and exact, with no failed try."""
    name, store_url = own_cluster
    server = live_server(store_url=store_url, workers=0, lease_seconds=2)
    api = setup_project(server, pg_source, SLOW_QUERY.format(every=250))
    server.start_worker(concurrency=2)
    server.start_worker(concurrency=2)
    task_id = api.export("acme", dataset_id="slow", format="csv", parallelism=6)["task_id"]
    api.wait("acme", task_id, timeout=60, until=running_with_progress)

    pg_ctl(name, "stop")
    r = api.http.get(f"/v1/projects/acme/exports/{task_id}")
    assert (r.status_code, r.json()["error_code"]) == (503, "STORE_UNAVAILABLE")
    time.sleep(10)
    pg_ctl(name, "start")

    done = api.wait("acme", task_id, timeout=180)
    assert done["status"] == "COMPLETED", done
    no_failed_try(done)
    exact(api, task_id, pg_source)


# ---- lost workers ---------------------------------------------------------------------


def test_a_killed_workers_partitions_are_lost_not_failed(
    pg_source: str, pg_database: str, live_server: Any
) -> None:
    """A worker SIGKILLed mid-partition: its partitions are reclaimed with the lost try
    given back (lost_count 1, attempts 1), so even with max_attempts=1 the task
    completes, exact."""
    server = live_server(store_url=pg_database, workers=0, lease_seconds=2, max_attempts=1)
    api = setup_project(server, pg_source, SLOW_QUERY.format(every=250))
    victim = server.start_worker(concurrency=2)
    # per_partition: the leases are what is tested here (under a snapshot, the killed
    # worker held it, and every partition is read again: tests/integration/test_keyless.py)
    task_id = api.export(
        "acme", dataset_id="slow", format="csv", parallelism=4, consistency="per_partition"
    )["task_id"]
    running = api.wait("acme", task_id, timeout=60, until=running_with_progress)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed = {p["index"] for p in running["partitions"] if p["status"] == "RUNNING"}
    server.start_worker(concurrency=2)

    done = api.wait("acme", task_id, timeout=180)
    assert done["status"] == "COMPLETED", done
    for p in done["partitions"]:
        assert (p["status"], p["attempts"]) == ("DONE", 1), p
        assert p["lost_count"] == (1 if p["index"] in killed else 0), p
    exact(api, task_id, pg_source)


# ---- sources ----------------------------------------------------------------------------


@pytest.fixture
def source_proxy() -> Iterator[FaultyProxy]:
    proxy = FaultyProxy("127.0.0.1", 5432)
    yield proxy
    proxy.close()


def test_a_source_blip_is_ridden_out(
    pg_source: str, source_proxy: FaultyProxy, live_server: Any
) -> None:
    """The source database unreachable for 5 s mid-read (connections reset): the reads
    start again when it is back, using up no attempt; COMPLETED and exact."""
    server = live_server(workers=4, max_attempts=1)
    api = setup_project(server, through(source_proxy, pg_source), SLOW_QUERY.format(every=250))
    task_id = api.export("acme", dataset_id="slow", format="csv", parallelism=4)["task_id"]
    api.wait("acme", task_id, timeout=60, until=running_with_progress)
    source_proxy.down(5)

    done = api.wait("acme", task_id, timeout=180)
    assert done["status"] == "COMPLETED", done
    no_failed_try(done)
    assert source_proxy.refused > 0  # the workers did try while it was down
    exact(api, task_id, pg_source)


def test_a_source_unreachable_beyond_the_budget_fails_source_unavailable(
    pg_source: str, source_proxy: FaultyProxy, live_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The source gone for longer than the outage budget (4 s here): the task FAILS with
    SOURCE_UNAVAILABLE; its partitions were not retried as failed reads (attempts 1 of
    3) and say SOURCE_UNAVAILABLE too, without naming the host or port. The log lines of
    the retries say what is left of the budget (counted from the first failure)."""
    caplog.set_level(logging.WARNING, "exportd.retrying")
    server = live_server(workers=4, max_attempts=3, outage_budget_seconds=4)
    api = setup_project(server, through(source_proxy, pg_source), SLOW_QUERY.format(every=250))
    task_id = api.export("acme", dataset_id="slow", format="csv", parallelism=4)["task_id"]
    api.wait("acme", task_id, timeout=60, until=running_with_progress)
    source_proxy.cut()

    done = api.wait("acme", task_id, timeout=120)
    assert (done["status"], done["error_code"]) == ("FAILED", "SOURCE_UNAVAILABLE"), done
    failed = [p for p in done["partitions"] if p["status"] == "FAILED"]
    assert failed
    for p in failed:
        assert (p["error_code"], p["attempts"]) == ("SOURCE_UNAVAILABLE", 1), p
        assert (
            "cannot be reached" in p["error_msg"] and str(source_proxy.port) not in p["error_msg"]
        )
    assert done["files"] == [] and done["file_status"] == "FAILED"
    lines = [r.getMessage() for r in caplog.records if "reading the source" in r.getMessage()]
    assert lines, "no retry was logged"
    left = [float(m.rsplit("up to ", 1)[1].split(" s more")[0]) for m in lines]
    assert all(0 <= s <= 4 for s in left), lines  # never the unbounded "inf s"


def test_readyz_is_200_when_the_store_and_storage_answer(live_server: Any) -> None:
    server = live_server(workers=0)
    r = httpx.get(f"{server.url}/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
