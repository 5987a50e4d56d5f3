"""`exportd serve` as a newcomer runs it: its workers are processes of their own on the
same SQLite store. An export completes with every row exactly once; the workers stop
with the server on SIGTERM and die with it on SIGKILL, and a server started again on the
same data directory finishes what the killed one left, every row exactly once. Over real
HTTP, with real processes."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_faults import SLOW_QUERY
from tests.support import free_port

ADMIN = "serve-admin"


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Serve:
    """`exportd serve` with its defaults (nothing but a data directory, a port, an admin
    token and short leases for the test)."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTD_")}
        env.update(
            EXPORTD_ADMIN_TOKEN=ADMIN, EXPORTD_LEASE_SECONDS="3", EXPORTD_JANITOR_SECONDS="0.5"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exportd", "serve", "--port", str(self.port),
             "--data-dir", str(data_dir)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/healthz").status_code == 200 and len(self.workers()) == 2:
                    break
            assert time.monotonic() < deadline and self.proc.poll() is None, "serve did not start"
            time.sleep(0.1)

    def workers(self) -> list[int]:
        return [p for p in children(self.proc.pid) if "spawn_main" in _cmdline(p)]

    def wait(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task: dict[str, Any] = self.http.get(f"/v1/projects/p/exports/{task_id}").json()
            if task.get("is_terminal"):
                return task
            assert time.monotonic() < deadline, task
            time.sleep(0.1)

    def rows(self, task_id: str) -> list[list[str]]:
        r = self.http.get(f"/v1/projects/p/exports/{task_id}/download")
        assert r.status_code == 200, r.text
        return list(csv.reader(io.StringIO(r.text)))[1:]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[Serve] = []

    def start() -> Serve:
        s = Serve(tmp_path / "data")
        started.append(s)
        return s

    yield start
    for s in started:
        for pid in [s.proc.pid, *s.workers()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        s.proc.wait()


def _setup(s: Serve, source: str, query: str | None = None) -> None:
    assert s.http.post("/v1/projects", json={"project_id": "p"}).status_code == 201
    body: dict[str, Any] = {"name": "f", "url": source, "key": "id"}
    body.update({"query": query} if query else {"table": "flights"})
    r = s.http.post("/v1/projects/p/datasets", json=body)
    assert r.status_code == 201, r.text


def test_serve_runs_two_worker_processes_and_stops_them(serve: Any, pg_source: str) -> None:
    s = serve()
    workers = s.workers()
    assert len(workers) == 2 and s.proc.pid not in workers
    _setup(s, pg_source)
    task = s.http.post("/v1/projects/p/exports", json={"dataset_id": "f", "format": "csv", "parallelism": 4}).json()  # fmt: skip
    done = s.wait(task["task_id"])
    assert done["status"] == "COMPLETED", done
    ids = [int(r[0]) for r in s.rows(task["task_id"])]
    assert sorted(ids) == list(range(1, len(ids) + 1)) and len(ids) == done["finished_count"] > 0

    s.proc.send_signal(signal.SIGTERM)  # the workers get the graceful stop too
    # a graceful stop is a clean exit (uvicorn alone would raise the caught signal again
    # once it has shut down: status -15)
    assert s.proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 20
    while any(alive(p) for p in workers):
        assert time.monotonic() < deadline, "worker processes outlived the server"
        time.sleep(0.1)


def test_killed_server_takes_its_workers_and_the_next_one_finishes(
    serve: Any, pg_source: str
) -> None:
    s = serve()
    _setup(s, pg_source, SLOW_QUERY.format(every=100))
    task = s.http.post("/v1/projects/p/exports", json={"dataset_id": "f", "format": "csv", "parallelism": 4}).json()  # fmt: skip
    deadline = time.monotonic() + 60
    while s.http.get(f"/v1/projects/p/exports/{task['task_id']}").json()["finished_count"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    workers = s.workers()
    s.proc.send_signal(signal.SIGKILL)  # mid-export
    s.proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers):
        assert time.monotonic() < deadline, "worker processes outlived a killed server"
        time.sleep(0.1)

    again = serve()
    done = again.wait(task["task_id"], timeout=240)
    assert done["status"] == "COMPLETED", done
    ids = [int(r[0]) for r in again.rows(task["task_id"])]
    assert len(ids) == len(set(ids)) == done["finished_count"]
    assert sorted(ids) == list(range(1, len(ids) + 1))
