"""Storage outages ridden out, and nothing left behind: moto's S3 server behind a
`FaultyProxy` that the tests cut, real worker processes, a full tmpfs, crashes held in
the window between a task's terminal commit and the deletion of its parts."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psycopg
import pytest

from tests.conftest import SOURCE_ROWS
from tests.integration.test_export_s3 import bucket_of, objects, open_uploads
from tests.netfault import FaultyProxy
from tests.support import Api, LiveServer, expected_cell, s3_client

SLOW = "SELECT f.*, nap(f.id, {every}) AS pad FROM flights f"
# the row `last` fails, after a slow stretch before it: the other partitions have
# committed their parts by then
LAST_ROW_FAILS = (
    "SELECT f.*, nap(f.id, CASE WHEN f.id > {last} - 20000 THEN 50 ELSE 500 END) AS pad, "
    "100 / (CASE WHEN f.id = {last} THEN 0 ELSE 1 END) AS boom FROM flights f"
)


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check()` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return got


def slow_rows(url: str) -> Counter[tuple[str, ...]]:
    """The rows of the `SLOW` query as exportd's CSV renders them (`pad` is always 0)."""
    with psycopg.connect(url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        rows = conn.execute("SELECT * FROM flights").fetchall()
    return Counter((*(expected_cell(v) for v in r), "0") for r in rows)


def csv_body(data: bytes) -> Counter[tuple[str, ...]]:
    reader = csv.reader(io.StringIO(data.decode(), newline=""))
    next(reader)
    return Counter(tuple(r) for r in reader)


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[FaultyProxy]:
    port = urlparse(s3_endpoint).port
    assert port is not None
    proxy = FaultyProxy("127.0.0.1", port)
    yield proxy
    proxy.close()


@pytest.fixture
def proxied_s3_url(s3_endpoint: str, s3_proxy: FaultyProxy) -> str:
    """A fresh bucket that exportd reaches only through the proxy."""
    bucket = f"exportd-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/root?endpoint_url=http://{s3_proxy.address}&region=us-east-1"


def direct(url: str, s3_endpoint: str) -> str:
    """The same bucket as the test sees it, around the proxy."""
    bucket, root, _ = bucket_of(url)
    return f"s3://{bucket}/{root}?endpoint_url={s3_endpoint}"


def setup_project(server: LiveServer, source: str, **dataset: Any) -> Api:
    admin = server.client()
    token = admin.project("acme")
    admin.dataset("acme", kind="sql", url=source, key="id", **dataset)
    return server.client(token)


def test_s3_down_30s_mid_export_every_task_completes_exactly(
    pg_database: str,
    pg_source: str,
    proxied_s3_url: str,
    s3_endpoint: str,
    s3_proxy: FaultyProxy,
    live_server: Any,
) -> None:
    """Three exports in flight when the S3 endpoint goes away for 30 s: the storage calls
    ride it out (no attempt used up), every task ends COMPLETED with exactly the source's
    rows, and the bucket holds no part and no open multipart upload afterwards."""
    server = live_server(store_url=pg_database, workers=0, storage_url=proxied_s3_url)
    api = setup_project(server, pg_source, name="slow", query=SLOW.format(every=500))
    server.start_worker(concurrency=2)
    server.start_worker(concurrency=2)
    ids = [api.export("acme", dataset_id="slow", parallelism=4)["task_id"] for _ in range(3)]

    def in_flight() -> bool:
        tasks = [api.task("acme", t) for t in ids]
        return any(p["status"] == "RUNNING" for t in tasks for p in t["partitions"])

    until(in_flight, 60, "a partition running")
    s3_proxy.down(30)
    done = [api.wait("acme", t, timeout=240) for t in ids]

    assert [t["status"] for t in done] == ["COMPLETED"] * 3, done
    assert s3_proxy.refused > 0  # the outage was met
    expected = slow_rows(pg_source)
    for task in done:
        assert all(p["attempts"] == 1 for p in task["partitions"]), [
            (p["attempts"], p.get("error_code"), p.get("error_msg")) for p in task["partitions"]
        ]
        r = api.http.get(f"/v1/projects/acme/exports/{task['task_id']}/download")
        assert r.status_code == 307, r.text
        data = httpx.get(r.headers["location"]).content
        assert csv_body(data) == expected
        [entry] = [f for f in task["files"] if f["kind"] == "data"]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    seen = direct(proxied_s3_url, s3_endpoint)
    until(lambda: objects(seen, "parts/") == {}, 60, "the parts to go")
    assert open_uploads(seen) == []


def test_cleanup_that_meets_an_s3_outage_is_done_once_s3_is_back(
    pg_database: str,
    pg_source: str,
    proxied_s3_url: str,
    s3_endpoint: str,
    s3_proxy: FaultyProxy,
    live_server: Any,
) -> None:
    """A task fails while S3 is down (its last partition hits a bad row): the cleanup of
    the parts the other partitions committed cannot reach S3 within the (short) budget;
    it stays due and is retried, and the parts prefix is empty once S3 is back."""
    server = live_server(
        store_url=pg_database,
        workers=0,
        storage_url=proxied_s3_url,
        max_attempts=1,
        outage_budget_seconds=2.0,
    )
    query = LAST_ROW_FAILS.format(last=SOURCE_ROWS)
    api = setup_project(server, pg_source, name="boom", query=query)
    server.start_worker(concurrency=2)
    server.start_worker(concurrency=2)
    task_id = api.export("acme", dataset_id="boom", parallelism=4)["task_id"]
    seen = direct(proxied_s3_url, s3_endpoint)

    def others_committed() -> bool:
        parts = api.task("acme", task_id)["partitions"]
        return [p["status"] for p in parts] == ["DONE", "DONE", "DONE", "RUNNING"]

    until(others_committed, 90, "three partitions committed, the last one running")
    assert len(objects(seen, f"parts/{task_id}/")) >= 3
    with s3_proxy.outage():
        failed = api.wait("acme", task_id, timeout=90)
        assert failed["status"] == "FAILED", failed
        time.sleep(10)  # several cleanup runs meet the outage
        assert objects(seen, f"parts/{task_id}/") != {}  # nothing could be deleted yet
    until(lambda: objects(seen, f"parts/{task_id}/") == {}, 90, "the cleanup after the outage")
    assert open_uploads(seen) == []
    assert objects(seen, f"exports/acme/{task_id}/") == {}


def test_crash_between_finish_and_parts_deletion_leaves_no_parts(
    pg_database: str, pg_source: str, live_server: Any
) -> None:
    """The coordinator is killed (SIGKILL) right after the task's COMPLETED commit, before
    it deleted the parts: the cleanup was recorded as due in that commit, so the next
    worker deletes them; the output stays intact."""
    server = live_server(store_url=pg_database, workers=0)
    api = setup_project(server, pg_source, name="flights", table="flights")
    victim = server.start_worker(concurrency=2, env={"EXPORTD_DEBUG_PAUSE_AFTER_FINISH": "120"})
    task_id = api.export("acme", dataset_id="flights", parallelism=4)["task_id"]
    parts = server.settings.data_dir / "files" / "parts" / task_id

    done = api.wait("acme", task_id, timeout=120)
    assert done["status"] == "COMPLETED", done
    assert [p for p in parts.rglob("*") if p.is_file()] != []  # held in the window
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    server.start_worker(concurrency=1)
    until(lambda: not parts.exists() or not any(parts.rglob("*")), 60, "the parts to go")
    data = api.http.get(f"/v1/projects/acme/exports/{task_id}/download").content
    [entry] = [f for f in done["files"] if f["kind"] == "data"]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert sum(csv_body(data).values()) == SOURCE_ROWS


def test_failed_task_leaves_no_data_file_locally(pg_source: str, live_server: Any) -> None:
    """The data file is assembled, then the manifest cannot be written (a directory
    squats on its name) until the coordinator's retries run out: the task is FAILED and
    its output folder holds no data file and no temporary file."""
    server = live_server(workers=2, max_attempts=2)
    api = setup_project(server, pg_source, name="slow", query=SLOW.format(every=1000))
    task_id = api.export("acme", dataset_id="slow", parallelism=2, file_name="out.csv")["task_id"]
    folder = server.settings.data_dir / "files" / "exports" / "acme" / task_id
    (folder / "manifest.json").mkdir(parents=True)
    (folder / f".out.csv.{uuid.uuid4().hex[:12]}.tmp").write_bytes(b"what a killed writer left")

    done = api.wait("acme", task_id, timeout=120)
    assert done["status"] == "FAILED", done
    assert "IsADirectoryError" in done["error_msg"]

    def nothing_left() -> bool:
        return not [p for p in folder.iterdir() if p.is_file()]

    until(nothing_left, 30, "the failed task's files to go")
    parts = server.settings.data_dir / "files" / "parts" / task_id
    assert [p for p in parts.rglob("*") if p.is_file()] == []


def test_failed_task_leaves_nothing_in_its_s3_folder(
    pg_database: str, pg_source: str, s3_storage_url: str, live_server: Any
) -> None:
    """What a coordinator killed after writing an output leaves in a task's S3 folder (a
    complete-looking data file, an open multipart upload): once the task is FAILED, the
    cleanup removes it."""
    server = live_server(
        store_url=pg_database, workers=0, storage_url=s3_storage_url, max_attempts=1
    )
    api = setup_project(server, pg_source, name="boom", query=LAST_ROW_FAILS.format(last=7))
    task_id = api.export("acme", dataset_id="boom", parallelism=2)["task_id"]
    bucket, root, endpoint = bucket_of(s3_storage_url)
    client = s3_client(endpoint)
    folder = f"{root}exports/acme/{task_id}/"
    client.put_object(Bucket=bucket, Key=folder + "export.csv", Body=b"id\n1\n2\n")
    client.create_multipart_upload(Bucket=bucket, Key=folder + "other.csv")
    server.start_worker(concurrency=2)

    done = api.wait("acme", task_id, timeout=120)
    assert done["status"] == "FAILED", done
    until(lambda: objects(s3_storage_url, f"exports/acme/{task_id}/") == {}, 60, "the files")
    assert open_uploads(s3_storage_url) == []
    assert objects(s3_storage_url, "parts/") == {}


def test_sweeper_removes_orphans_and_keeps_what_is_live(
    pg_database: str, pg_source: str, live_server: Any
) -> None:
    """Orphans a crash or a deletion can leave (parts and outputs of a task the store does
    not know, an old temporary file beside a finished file) are swept; a GENERATED task's
    files and fresh objects of unknown tasks (within the grace period) stay."""
    server = live_server(store_url=pg_database, workers=2, sweep_seconds=0.5)
    api = setup_project(server, pg_source, name="flights", table="flights")
    done = api.wait("acme", api.export("acme", dataset_id="flights")["task_id"], timeout=120)
    assert done["status"] == "COMPLETED"
    files = server.settings.data_dir / "files"
    folder = files / "exports" / "acme" / done["task_id"]
    kept = sorted(p for p in folder.iterdir())
    ghost, fresh = uuid.uuid4().hex, uuid.uuid4().hex
    old = time.time() - 2 * 3600
    planted_old = [
        files / "parts" / ghost / "00000-a1-0123456789ab" / "s00000.csv",
        files / "exports" / "acme" / ghost / "export.csv",
        folder / f".export.csv.{uuid.uuid4().hex[:12]}.tmp",
    ]
    planted_fresh = [files / "parts" / fresh / "00000-a1-0123456789ab" / "s00000.csv"]
    for path in planted_old + planted_fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left behind")
    for path in planted_old:
        os.utime(path, (old, old))

    until(lambda: not any(p.exists() for p in planted_old), 60, "the sweeper")
    assert all(p.exists() for p in planted_fresh)
    assert sorted(folder.iterdir()) == kept  # the GENERATED task's files


def _mount_tmpfs(path: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting needs root")
def test_local_disk_full_fails_with_storage_full(
    pg_database: str, pg_source: str, live_server: Any, tmp_path: Path
) -> None:
    """Storage on a 2 MiB tmpfs, an export of several MiB: FAILED with `STORAGE_FULL`
    (not a generic partition or coordinator error), and the disk is left empty."""
    disk = tmp_path / "small"
    disk.mkdir()
    try:
        _mount_tmpfs(disk, "2m")
    except subprocess.CalledProcessError:
        pytest.skip("this host does not let the test mount a tmpfs")
    try:
        server = live_server(
            store_url=pg_database, workers=2, storage_url=disk.as_uri(), max_attempts=2
        )
        api = setup_project(server, pg_source, name="flights", table="flights")
        done = api.wait("acme", api.export("acme", dataset_id="flights")["task_id"], timeout=120)
        assert done["status"] == "FAILED", done
        assert done["error_code"] == "STORAGE_FULL", done
        assert any(p["error_code"] == "STORAGE_FULL" for p in done["partitions"]) or (
            "StorageFull" in (done["error_msg"] or "")
        )
        until(lambda: not [p for p in disk.rglob("*") if p.is_file()], 60, "an empty disk")
        server.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
