"""Live progress (server-sent events) over real HTTP, served from the store: a second API
process that runs no workers streams a task that another process's workers execute."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from tests.api_support import make_project, small_sqlite_source
from tests.support import LiveServer

# nap() sleeps 20 ms every 500 rows; as a filter it keeps the rows streaming in key order
SLOW_QUERY = "SELECT id, carrier FROM flights WHERE id <= 30000 AND nap(id, 500) = 0"


def read_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event name, data) per event; ("comment", text) per comment; ("retry", ms)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line == "":
            if "retry" in fields:
                yield "retry", int(fields["retry"])
            if "event" in fields:
                yield fields["event"], {"id": fields.get("id"), **json.loads(fields["data"])}
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def test_events_follow_a_task_from_another_process(
    pg_source: str, pg_database: str, live_server: Any
) -> None:
    runner: LiveServer = live_server(
        store_url=pg_database, workers=2, heartbeat_seconds=0.2, batch_size=500
    )
    watcher: LiveServer = live_server(store_url=pg_database, workers=0, events_poll_seconds=0.05)
    p = make_project(runner, "acme", pg_source, name="slow", table=None, query=SLOW_QUERY)
    task = p["writer"].export("acme", dataset_id="slow", parallelism=2)
    url = f"{watcher.url}/v1/projects/acme/exports/{task['task_id']}/events"
    headers = {"X-Auth-Token": p.tokens["reader"]}

    events: list[tuple[str, Any]] = []
    with httpx.stream("GET", url, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(read_events(r))

    assert events[0] == ("retry", 2000)
    named = [(n, d) for n, d in events if n not in ("retry", "comment")]
    assert named[-1][0] == "end" and named[-1][1]["status"] == "COMPLETED"
    changes = [(n, d) for n, d in named if n != "end"]
    assert changes[0][0] == "status"
    ids = [int(d["id"]) for _, d in changes]
    assert ids == sorted(set(ids)), "one event per version, in order"
    statuses = [d["status"] for _, d in changes]
    assert statuses[-1] == "COMPLETED" and "RUNNING" in statuses
    stages = [d["current_state"]["status_id"] for _, d in changes]
    assert stages == sorted(stages) and 60 in stages and stages[-1] == 90
    assert [d["currentState"]["statusId"] for _, d in changes] == stages
    progress = [d["progress"] for _, d in changes]
    assert progress == sorted(progress) and progress[-1] == 100.0
    during = [d["finished_count"] for n, d in changes if n == "progress"]
    assert during and 0 < max(during) <= 30000  # live row counts were seen before the end
    assert changes[-1][1]["finished_count"] == 30000
    assert {n for n, _ in changes} >= {"status", "progress"}  # "stage" when seen apart
    final = p["reader"].task("acme", task["task_id"])
    assert final["status"] == "COMPLETED" and final["finished_count"] == 30000


def test_events_keep_alive_and_end_on_cancel(tmp_path: Any, live_server: Any) -> None:
    server: LiveServer = live_server(
        workers=0, events_poll_seconds=0.05, events_heartbeat_seconds=0.2
    )
    p = make_project(server, "acme", small_sqlite_source(tmp_path))
    task = p["writer"].export("acme", dataset_id="flights")
    url = f"/v1/projects/acme/exports/{task['task_id']}/events"
    seen: list[tuple[str, Any]] = []
    with p["reader"].http.stream("GET", url) as r:
        assert r.status_code == 200
        for name, data in read_events(r):
            seen.append((name, data))
            if name == "comment" and sum(1 for n, _ in seen if n == "comment") == 2:
                cancel = p["writer"].http.post(
                    f"/v1/projects/acme/exports/{task['task_id']}/cancel"
                )
                assert cancel.status_code == 202
    names = [n for n, _ in seen]
    assert names[:2] == ["retry", "status"] and seen[1][1]["status"] == "PENDING"
    assert ("comment", "keepalive") in seen
    assert names[-2:] == ["status", "end"]
    assert seen[-2][1]["status"] == "CANCELED" and seen[-2][1]["is_terminal"] is True
    assert seen[-1][1] == {"id": None, "task_id": task["task_id"], "status": "CANCELED"}


def test_events_refuse_unknown_tasks_and_other_projects(tmp_path: Any, live_server: Any) -> None:
    server: LiveServer = live_server(workers=0)
    source = small_sqlite_source(tmp_path)
    a = make_project(server, "a", source)
    b = make_project(server, "b", source)
    task = b["writer"].export("b", dataset_id="flights")
    r = a["admin"].http.get(f"/v1/projects/b/exports/{task['task_id']}/events")
    assert r.status_code == 404 and task["task_id"] not in r.text
    r = b["reader"].http.get("/v1/projects/b/exports/nope/events")
    assert r.status_code == 404 and r.json()["error_code"] == "TASK_NOT_FOUND"
    r = httpx.get(f"{server.url}/v1/projects/b/exports/{task['task_id']}/events")
    assert r.status_code == 401
    done = b["writer"].http.post(f"/v1/projects/b/exports/{task['task_id']}/cancel")
    assert done.json()["status"] == "CANCELED"
    r = b["reader"].http.get(f"/v1/projects/b/exports/{task['task_id']}/events")
    assert r.status_code == 200  # a finished task: its state, then the end, at once
    events = [n for n, _ in read_events(r)]
    assert events == ["retry", "status", "end"]
