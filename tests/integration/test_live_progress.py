"""Progress saved about once a second (between the 5 s heartbeats), summed at read time,
and a status whose values never contradict each other nor go back: a split export
watched by HTTP polling and over SSE at once."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import httpx

from tests.integration.test_api_events import read_events
from tests.integration.test_faults import setup_project

# nap() sleeps 20 ms every 300 rows: about 13 s of naps over 200,000 rows, 2 workers
SLOW = "SELECT id, carrier FROM flights WHERE nap(id, 300) = 0"


def test_split_export_progress_in_order_and_about_every_second(
    pg_source: str, live_server: Any
) -> None:
    server = live_server(workers=2, lease_seconds=20)  # heartbeats every 5 s
    api = setup_project(server, pg_source, name="slow", query=SLOW)
    task = api.export("acme", dataset_id="slow", parallelism=4, max_rows_per_file=60_000)
    tid = task["task_id"]

    events: list[tuple[float, str, Any]] = []

    def watch() -> None:
        url = f"{server.url}/v1/projects/acme/exports/{tid}/events"
        with httpx.stream("GET", url, headers=api.http.headers, timeout=120) as r:
            for name, data in read_events(r):
                events.append((time.monotonic(), name, data))

    sse = threading.Thread(target=watch, daemon=True)
    sse.start()
    polled: list[dict[str, Any]] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        polled.append(api.task("acme", tid))
        if polled[-1]["is_terminal"]:
            break
        time.sleep(0.1)
    sse.join(timeout=30)
    final = polled[-1]
    assert final["status"] == "COMPLETED", final["error_msg"]
    assert final["finished_count"] == final["total_count"] > 0

    # polled over HTTP: nothing goes back, nothing contradicts
    stages = [t["current_state"]["status_id"] for t in polled]
    assert stages == sorted(stages) and stages[-1] == 90
    assert 70 not in stages  # stage 70 is the assembly of one single file
    for t in polled:
        parts = t["partitions"]
        if t["current_state"]["status_id"] >= 80:
            assert parts and all(p["status"] == "DONE" for p in parts), t
        assert not t["total_is_estimate"] or t["total_count"] is not None
        assert 0 <= t["progress"] <= 100
        assert (t["progress"] == 100) == (t["status"] == "COMPLETED"), t
        if t["status"] == "RUNNING" and parts:
            assert t["finished_count"] == sum(p["finished_count"] for p in parts)
    progress = [t["progress"] for t in polled]
    assert progress == sorted(progress)
    running = [t["finished_count"] for t in polled if t["status"] == "RUNNING"]
    # more distinct counts than 5 s heartbeats alone could show in this time
    assert len(set(running)) >= 8, sorted(set(running))

    # over SSE: the row count advances at least every 2 s while rows are exported
    moved = [
        (at, d["finished_count"])
        for at, name, d in events
        if name in ("status", "stage", "progress") and d["status"] == "RUNNING"
    ]
    changes = [at for (at, n), (_, m) in itertools.pairwise(moved) if m != n]
    assert len(changes) >= 6, moved
    gaps = [b - a for a, b in itertools.pairwise(changes)]
    assert max(gaps) <= 2.0, gaps
