"""An import's publish streamed while its partitions run (`execution/imports/streaming.py`),
on a real PostgreSQL target: while the partitions still run, a backend of exportd holds
the publish transaction (its lock on the table) and nothing of it is visible; at the end
the table holds every valid row once, a key repeated in a later partition is a rejected
row of its line, and the manifest says the publish was streamed. Canceled mid-stream, the
table is left as it was: no row, no marker, no lock. A worker process told to stop
(SIGTERM) rolls its stream back and hands the lease back at once, and another worker
ends the import without waiting for the lease to expire. (A worker SIGKILLed with the
stream in its process, and the coordinator killed inside the publish: test_import_faults.)"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.imports_support import (
    NULL,
    cell,
    csv_text,
    pg_target,
    rows,
    setup,
    start_import,
    table_rows,
    upload,
)
from tests.support import FLIGHT_COLUMNS, Api, LiveServer

N = 3000
LOCKED = """SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
            WHERE c.relname = 'flights' AND l.mode = 'RowExclusiveLock'
              AND l.pid <> pg_backend_pid()"""


@pytest.fixture
def target_url(pg_database: str) -> str:
    pg_target(pg_database)
    return pg_database


def _one(url: str, sql: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    return row[0] if row else None


def _streaming(api: Api, url: str, task_id: str) -> None:
    """Wait until a partition has committed while others run, then for the publish
    transaction's lock on the table; its rows stay invisible until the commit."""
    api.wait("acme", task_id, timeout=60,
             until=lambda t: any(p["status"] == "DONE" for p in t["partitions"]))  # fmt: skip
    deadline = time.monotonic() + 20
    while not _one(url, LOCKED) and time.monotonic() < deadline:
        time.sleep(0.05)
    task = api.task("acme", task_id)
    assert not task["is_terminal"], task
    assert _one(url, LOCKED) >= 1, "no publish transaction holds the table while partitions run"
    assert _one(url, "SELECT count(*) FROM flights") == 0


def _server(live_server: Any) -> LiveServer:
    server: LiveServer = live_server(workers=2, batch_size=200, debug_pause_import_batch=0.15)
    return server


def test_the_publish_streams_while_the_partitions_run(target_url: str, live_server: Any) -> None:
    api = setup(_server(live_server), target_url)
    data = rows(N)
    again = (data[5][0], *[cell(v) for v in data[-1][1:]])  # the key of line 7, at the end
    text = csv_text(data) + ",".join(str(v) for v in again) + "\n"
    assert text.splitlines()[0].split(",") == FLIGHT_COLUMNS
    up = upload(api, "f.csv", text.encode())
    task = start_import(api, dataset_id="flights", upload_id=up["upload_id"],
                        null_values=[NULL], parallelism=4, max_errors=5)  # fmt: skip
    _streaming(api, target_url, task["task_id"])

    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "COMPLETED_WITH_ERRORS", done
    assert table_rows(target_url) == Counter(data)  # the first line of the key kept
    [item] = done["failed_items"]
    assert item["line"] == text.count("\n") and "duplicate key" in item["reason"], item
    manifest = api.http.get(f"/v1/projects/acme/imports/{task['task_id']}/manifest").json()
    assert manifest["published_from"] == "files" and manifest["publish_streamed"] is True
    assert manifest["imported_rows"] == N and manifest["rejected_rows"] == 1
    assert _one(target_url, LOCKED) == 0
    marker = f"SELECT row_count FROM exportd_imports WHERE task_id = '{task['task_id']}'"
    assert _one(target_url, marker) == N


def test_canceled_mid_stream_the_table_is_as_it_was(target_url: str, live_server: Any) -> None:
    api = setup(_server(live_server), target_url)
    up = upload(api, "f.csv", csv_text(rows(N)).encode())
    task = start_import(api, dataset_id="flights", upload_id=up["upload_id"],
                        null_values=[NULL], parallelism=4)  # fmt: skip
    _streaming(api, target_url, task["task_id"])
    r = api.http.post(f"/v1/projects/acme/imports/{task['task_id']}/cancel")
    assert r.status_code == 202, r.text

    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "CANCELED", done
    assert table_rows(target_url) == Counter()
    assert _one(target_url, "SELECT count(*) FROM exportd_imports") == 0
    assert _one(target_url, LOCKED) == 0


def test_a_worker_stopped_mid_stream_hands_the_publish_back(
    target_url: str, live_server: Any, tmp_path: Path
) -> None:
    server: LiveServer = live_server(
        store_url=f"sqlite:///{tmp_path / 'store.db'}", workers=0, lease_seconds=60.0,
        batch_size=200,
    )  # fmt: skip
    api = setup(server, target_url)
    data = rows(N)
    up = upload(api, "f.csv", csv_text(data).encode())
    victim = server.start_worker(1, env={"EXPORTD_DEBUG_PAUSE_IMPORT_BATCH": "0.15"})
    task = start_import(api, dataset_id="flights", upload_id=up["upload_id"],
                        null_values=[NULL], parallelism=4)  # fmt: skip
    _streaming(api, target_url, task["task_id"])
    victim.send_signal(signal.SIGTERM)
    assert victim.wait(timeout=60) == 0
    assert _one(target_url, LOCKED) == 0  # rolled back with the process's stop
    server.start_worker(2)
    # well before the 60 s lease could have expired: the lease was handed back
    done = api.wait("acme", task["task_id"], timeout=40)
    assert done["status"] == "COMPLETED", done
    assert table_rows(target_url) == Counter(data)
    manifest = api.http.get(f"/v1/projects/acme/imports/{task['task_id']}/manifest").json()
    assert manifest["imported_rows"] == N
