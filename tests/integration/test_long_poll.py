"""`GET .../exports/{id}?wait=N[&since=V]`: a long poll answered as soon as the task's
version moves past what the caller saw, or after N s (at most 60); and the Python client
that long-polls when the event stream cannot be had."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from exportd.cli.client import Client
from tests.api_support import make_project, small_sqlite_source
from tests.integration.test_faults import setup_project

SLOW = "SELECT id, carrier FROM flights WHERE id <= 40000 AND nap(id, 400) = 0"


def test_long_poll_waits_answers_on_change_and_refuses_bad_values(
    tmp_path: Path, live_server: Any
) -> None:
    server = live_server(workers=0, events_poll_seconds=0.1)  # the task stays PENDING
    p = make_project(server, "acme", small_sqlite_source(tmp_path))
    writer = p["writer"]
    task = writer.export("acme", dataset_id=p.dataset["dataset_id"])
    path = f"/v1/projects/acme/exports/{task['task_id']}"

    t0 = time.monotonic()
    r = writer.http.get(path, params={"wait": 1})
    assert r.status_code == 200 and r.json()["status"] == "PENDING"
    assert time.monotonic() - t0 >= 0.9  # nothing changed: it waited the whole second
    version = int(r.headers["X-Task-Version"])
    # a version the caller has not seen: answered at once, with the current state
    r = writer.http.get(path, params={"wait": 60, "since": version + 1000})
    assert r.status_code == 200 and int(r.headers["X-Task-Version"]) == version

    for bad in ({"wait": 61}, {"wait": -1}, {"wait": "soon"}, {"wait": 5, "since": -1}):
        r = writer.http.get(path, params=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error_code"] and r.json()["error_msg"], r.text
    assert writer.task("acme", task["task_id"])["status"] == "PENDING"  # nothing changed

    # a change while a long poll waits answers it (here: the cancel)
    got: dict[str, Any] = {}

    def poll() -> None:
        got["r"] = writer.http.get(path, params={"wait": 30, "since": version})
        got["at"] = time.monotonic()

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.5)
    canceled_at = time.monotonic()
    assert writer.http.post(path + "/cancel").status_code == 202
    waiter.join(timeout=40)
    assert got["r"].status_code == 200 and got["r"].json()["status"] == "CANCELED"
    assert got["at"] - canceled_at < 10  # not the 30 s of the wait
    assert int(got["r"].headers["X-Task-Version"]) > version
    assert "Retry-After" not in got["r"].headers


class NoEvents(httpx.HTTPTransport):
    """A proxy that cannot stream: /events answers 503; every other request is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[httpx.URL] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(503, json={"error_code": "NO_STREAM", "error_msg": "no"})
        if request.method == "GET":
            self.gets.append(request.url)
        return super().handle_request(request)


def test_client_long_polls_and_learns_of_completion_within_a_second(
    pg_source: str, live_server: Any
) -> None:
    server = live_server(workers=2)
    api = setup_project(server, pg_source, name="slow", query=SLOW)
    token = api.http.headers["Authorization"].removeprefix("Bearer ")
    transport = NoEvents()
    with Client(server.url, token, transport=transport) as c:
        task = c.create_export("acme", dataset_id="slow", parallelism=2)
        final = c.wait("acme", task.task_id, timeout=120)
        learned = time.time()
    assert final.status == "COMPLETED" and final.finished_count == 40000
    assert final.end_time is not None
    assert learned - final.end_time.timestamp() <= 1.0
    polls = [u for u in transport.gets if u.path.endswith(task.task_id)]
    assert polls and all("wait" in u.params for u in polls)  # long polls, no busy polling
    assert isinstance(final.end_time, datetime)
