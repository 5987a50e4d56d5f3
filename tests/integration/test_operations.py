"""What an operator watches: Prometheus metrics scraped over HTTP from the API's /metrics
and from an `exportd worker`'s own metrics port, read with prometheus_client's parser,
after a real export; JSON log lines with the unit of work's ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SOURCE_ROWS
from tests.integration.test_faults import SLOW_QUERY, csv_rows, pg_rows, setup_project
from tests.support import FLIGHT_COLUMNS, Api, LiveServer, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(url, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def test_api_metrics_after_an_export(pg_source: str, pg_database: str, live_server: Any) -> None:
    server: LiveServer = live_server(store_url=pg_database, workers=2)
    api = setup_project(server, pg_source, name="flights", table="flights")
    url = f"{server.url}/metrics"
    before = scrape(url, server.admin_token)

    task = api.export("acme", dataset_id="flights", format="csv", parallelism=4)
    done = api.wait("acme", task["task_id"], timeout=180)
    assert done["status"] == "COMPLETED", done
    after = scrape(url, server.admin_token)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # this process's workers did the work: rows and bytes as the task counts them
    assert delta("exportd_rows_written_total") == SOURCE_ROWS == done["finished_count"]
    assert delta("exportd_bytes_written_total") == sum(
        p["bytes_written"] for p in done["partitions"]
    )
    assert delta("exportd_partitions_committed_total") == len(done["partitions"]) == 4
    assert delta("exportd_claims_total", kind="partition") == 4
    assert delta("exportd_claims_total", kind="coordinator") >= 2  # plan, finish
    assert delta("exportd_claim_seconds_count", kind="partition") >= 4
    assert delta("exportd_commits_fenced_total") == 0
    # the counters are the test process's, shared with earlier tests' servers: the
    # workers that claimed during this export are the ones whose count moved
    workers = {
        dict(ls).get("worker")
        for (n, ls), v in after.items()
        if n == "exportd_claims_total" and v > before.get((n, ls), 0.0)
    }
    assert workers <= {"w0", "w1"} and workers, workers
    # the store's figures, read at the scrape: the one task, its partitions all done
    assert total(after, "exportd_tasks", status="COMPLETED") == 1
    assert total(after, "exportd_tasks", status="RUNNING") == 0
    assert total(after, "exportd_partitions") == 0  # none left to do
    assert total(after, "exportd_partitions_queued") == 0
    assert total(after, "exportd_partitions_running") == 0

    # only the administrator; and nothing of a tenant is named
    assert httpx.get(url).status_code == 401
    project = httpx.get(
        url, headers={"Authorization": f"Bearer {api.http.headers['Authorization'][7:]}"}
    )
    assert project.status_code == 403, project.text
    assert project.json()["error_code"] == "FORBIDDEN"
    body = httpx.get(url, headers={"Authorization": f"Bearer {server.admin_token}"}).text
    assert "acme" not in body and task["task_id"] not in body and "flights" not in body


def test_public_metrics_need_no_token(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", workers=0, metrics_public=True)
    server.start()
    try:
        samples = scrape(f"{server.url}/metrics")
        assert total(samples, "exportd_tasks") == 0
        assert ("exportd_partitions_queued", ()) in samples
    finally:
        server.stop()


@pytest.fixture
def worker_logs(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "worker.stderr"


def test_worker_metrics_port_and_json_logs(
    pg_source: str, pg_database: str, live_server: Any, worker_logs: Path
) -> None:
    server: LiveServer = live_server(store_url=pg_database, workers=0)
    api = setup_project(server, pg_source, name="slow", query=SLOW_QUERY.format(every=250))
    port = free_port()
    env = {**server.env(), "EXPORTD_LOG_FORMAT": "json"}
    with worker_logs.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exportd", "worker", "--concurrency", "2",
             "--metrics-port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    server.workers.append(proc)
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 60
    while True:
        try:
            before = scrape(url)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, worker_logs.read_text()
            time.sleep(0.1)

    task = api.export("acme", dataset_id="slow", format="csv", parallelism=3)

    def under_way() -> bool:  # the API's view of the store, while the worker runs
        s = scrape(f"{server.url}/metrics", server.admin_token)
        running = total(s, "exportd_partitions_running")
        assert running == total(s, "exportd_partitions", status="RUNNING") <= 2
        return running >= 1 and total(s, "exportd_tasks", status="RUNNING") == 1

    api.wait("acme", task["task_id"], timeout=60, until=lambda _t: under_way())
    done = api.wait("acme", task["task_id"], timeout=180)
    assert done["status"] == "COMPLETED", done
    body = api.http.get(f"/v1/projects/acme/exports/{task['task_id']}/download").content
    assert csv_rows(body) == pg_rows(pg_source, [*FLIGHT_COLUMNS, "0 AS pad"])
    after = scrape(url)
    proc.terminate()
    assert proc.wait(timeout=60) == 0

    rows = total(after, "exportd_rows_written_total") - total(before, "exportd_rows_written_total")
    assert rows == SOURCE_ROWS
    processes = {dict(ls)["process"] for (n, ls) in after if n == "exportd_rows_written_total"}
    assert processes == {next(iter(processes))} and processes.pop().endswith(f":{proc.pid}")
    assert total(after, "exportd_partitions_committed_total") == 3
    assert ("exportd_tasks", (("status", "COMPLETED"),)) not in after  # the API's, not a worker's

    # every line is one JSON object; the unit-of-work lines name the task and partition
    lines = worker_logs.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    commits = [r for r in records if "committed:" in r["message"]]
    assert sorted(r["partition"] for r in commits) == [0, 1, 2], commits
    assert all(r["task_id"] == task["task_id"] and r["unit"] == "partition" for r in commits)
    steps = [r for r in records if r["message"].startswith("coordinator of")]
    assert {r["message"].rsplit(": ", 1)[1] for r in steps} >= {"plan", "finish"}, steps
    assert all(r["task_id"] == task["task_id"] and r["unit"] == "coordinator" for r in steps)
    assert "partition" not in steps[0]
    outside = [r for r in records if "worker running" in r["message"]]
    assert outside and "task_id" not in outside[0]


def test_failed_notifications_are_counted(sqlite_source: str, live_server: Any) -> None:
    server: LiveServer = live_server(
        notify_max_attempts=2,
        notify_retry_base_seconds=0.1,
        webhook_allow_networks=["127.0.0.1/32"],
    )
    admin = server.client()
    token = admin.project("p")
    admin.dataset("p", name="flights", url=sqlite_source, table="flights", key="id")
    api = server.client(token)
    url = f"{server.url}/metrics"
    before = total(
        scrape(url, server.admin_token), "exportd_notification_failures_total", channel="webhook"
    )
    closed = f"http://127.0.0.1:{free_port()}/nobody-listens"
    task = api.export(
        "p",
        dataset_id="flights",
        filter={"id": {"between": [1, 50]}},
        notify={"webhook_url": closed},
    )
    done = api.wait(
        "p",
        task["task_id"],
        until=lambda t: t["notifications"] and t["notifications"][0]["status"] == "FAILED",
    )
    assert done["notifications"][0]["attempts"] == 2
    after = scrape(url, server.admin_token)
    assert total(after, "exportd_notification_failures_total", channel="webhook") - before == 2


def test_serve_adds_up_its_worker_processes(
    pg_source: str, pg_database: str, tmp_path: Path
) -> None:
    """`exportd serve` runs its workers as processes of their own: its /metrics counts
    what they did (prometheus_client's multiprocess mode, a directory of the server's)."""
    port = free_port()
    env = {
        **os.environ,
        "EXPORTD_DATABASE_URL": pg_database,
        "EXPORTD_ADMIN_TOKEN": "ops-test-admin-token-0123456789",
        "EXPORTD_LEASE_SECONDS": "3",
        "EXPORTD_POLL_SECONDS": "0.2",
        "EXPORTD_SHUTDOWN_GRACE_SECONDS": "0.5",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exportd", "serve", "--port", str(port), "--workers", "2",
             "--data-dir", str(tmp_path / "data")],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        api = Api(url, env["EXPORTD_ADMIN_TOKEN"])
        deadline = time.monotonic() + 60
        while True:
            try:
                if api.http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, (
                tmp_path / "serve.log"
            ).read_text()
            time.sleep(0.2)
        api.project("acme")
        api.dataset("acme", kind="sql", url=pg_source, key="id", name="flights", table="flights")
        task = api.export("acme", dataset_id="flights", format="csv", parallelism=4)
        done = api.wait("acme", task["task_id"], timeout=180)
        assert done["status"] == "COMPLETED", done
        samples = scrape(f"{url}/metrics", env["EXPORTD_ADMIN_TOKEN"])
        assert total(samples, "exportd_rows_written_total") == SOURCE_ROWS
        assert total(samples, "exportd_partitions_committed_total") == 4
        pids = {
            dict(ls)["process"].rsplit(":", 1)[1]
            for (n, ls) in samples
            if n == "exportd_claims_total"
        }
        assert str(proc.pid) not in pids and 1 <= len(pids) <= 2, pids  # the workers' own
        assert total(samples, "exportd_tasks", status="COMPLETED") == 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) in (0, -15)  # uvicorn raises the signal again at exit
