"""Exports to S3 (moto's server mode on loopback) over real HTTP, with worker processes:
the coordinator completes a multipart upload from the committed part objects; a worker
killed between uploading its part and committing it leaves no trace in the result."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import psycopg

from tests.conftest import SOURCE_ROWS
from tests.integration.test_export_e2e import check_parquet_export, read_csv, source_rows
from tests.support import FLIGHT_COLUMNS, s3_client

MiB = 1024 * 1024


def bucket_of(url: str) -> tuple[str, str, str]:
    """(bucket, key prefix, endpoint) of an `s3://` storage URL."""
    parsed = urlparse(url)
    return parsed.netloc, parsed.path.strip("/") + "/", parse_qs(parsed.query)["endpoint_url"][0]


def objects(url: str, under: str) -> dict[str, int]:
    bucket, root, endpoint = bucket_of(url)
    pages = (
        s3_client(endpoint)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=root + under)
    )
    return {o["Key"][len(root) :]: o["Size"] for p in pages for o in p.get("Contents", [])}


def open_uploads(url: str) -> list[str]:
    bucket, _, endpoint = bucket_of(url)
    return [
        u["Key"]
        for u in s3_client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    ]


def download(api: Any, project: str, task_id: str) -> bytes:
    """The download route redirects to a presigned URL, which works without a token."""
    r = api.http.get(f"/v1/projects/{project}/exports/{task_id}/download")
    assert r.status_code in (302, 307), r.text
    location = r.headers["location"]
    assert "X-Amz-Signature=" in location
    got = httpx.get(location)  # no Authorization header: the URL itself grants access
    assert got.status_code == 200
    return got.content


def setup(server: Any, source: str) -> Any:
    admin = server.client()
    token = admin.project("acme")
    admin.dataset("acme", name="flights", url=source, table="flights", key="id")
    return server.client(token)


def test_worker_killed_between_upload_and_commit(
    pg_database: str, pg_source: str, s3_storage_url: str, live_server: Any
) -> None:
    server = live_server(store_url=pg_database, workers=0, storage_url=s3_storage_url)
    api = setup(server, pg_source)
    victim = server.start_worker(concurrency=1, env={"EXPORTD_DEBUG_PAUSE_BEFORE_COMMIT": "120"})
    # per_partition: the lease of the killed worker is what is tested here (under a
    # snapshot, it held it, and every partition is read again: tests/integration/test_keyless.py)
    task = api.export(
        "acme", dataset_id="flights", format="csv", parallelism=4, consistency="per_partition"
    )
    task_id = task["task_id"]

    deadline = time.monotonic() + 90
    while not (uploaded := objects(s3_storage_url, f"parts/{task_id}/")):
        assert time.monotonic() < deadline, "the worker never uploaded a part"
        time.sleep(0.05)
    [attempt] = {key.rsplit("/", 2)[-2] for key in uploaded}  # its segment (and index)
    index = int(attempt[:5])
    assert api.task("acme", task_id)["partitions"][index]["status"] == "RUNNING"  # not committed
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    server.start_worker(concurrency=2)
    done = api.wait("acme", task_id, timeout=180)

    assert done["status"] == "COMPLETED", done
    assert done["partitions"][index]["attempts"] == 1  # a lost worker is not a failed try
    assert done["partitions"][index]["lost_count"] == 1
    assert all(p["status"] == "DONE" for p in done["partitions"])
    data = download(api, "acme", task_id)
    header, rows = read_csv(data)
    assert header == FLIGHT_COLUMNS
    assert rows == source_rows(pg_source)  # every row exactly once: the orphan is not in it
    assert sum(rows.values()) == SOURCE_ROWS
    manifest = json.loads(api.http.get(f"/v1/projects/acme/exports/{task_id}/manifest").content)
    assert manifest["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["files"][0]["bytes"] == len(data)
    assert objects(s3_storage_url, "parts/") == {}  # the orphan and the committed parts: gone
    assert open_uploads(s3_storage_url) == []
    # parts under 5 MiB each, merged into a multipart object of 5 MiB parts
    assert max(p["bytes_written"] for p in done["partitions"]) < 5 * MiB < len(data)
    bucket, root, endpoint = bucket_of(s3_storage_url)
    key = f"{root}exports/acme/{task_id}/{done['file_name']}"
    assert "-" in s3_client(endpoint).head_object(Bucket=bucket, Key=key)["ETag"]
    out = objects(s3_storage_url, "exports/")
    assert set(out) == {
        f"exports/acme/{task_id}/{done['file_name']}",
        f"exports/acme/{task_id}/manifest.json",
    }
    # deleting the task deletes its objects
    assert api.http.delete(f"/v1/projects/acme/exports/{task_id}").status_code == 204
    assert objects(s3_storage_url, "") == {}


def test_large_parts_are_copied_server_side(
    pg_database: str, pg_source: str, s3_storage_url: str, live_server: Any
) -> None:
    """JSON Lines parts of several MiB each: the output is a multipart object whose parts
    are at least 5 MiB (moto refuses to complete it otherwise)."""
    server = live_server(store_url=pg_database, workers=2, storage_url=s3_storage_url)
    api = setup(server, pg_source)
    task = api.export("acme", dataset_id="flights", format="jsonl", parallelism=3)
    done = api.wait("acme", task["task_id"], timeout=180)
    assert done["status"] == "COMPLETED", done
    assert min(p["bytes_written"] for p in done["partitions"]) > 5 * MiB
    data = download(api, "acme", task["task_id"])
    lines = data.decode().splitlines()
    assert len(lines) == SOURCE_ROWS
    assert sorted(json.loads(line)["id"] for line in lines) == list(range(1, SOURCE_ROWS + 1))
    [entry] = [f for f in done["files"] if f["kind"] == "data"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    bucket, root, endpoint = bucket_of(s3_storage_url)
    head = s3_client(endpoint).head_object(
        Bucket=bucket, Key=f"{root}exports/acme/{task['task_id']}/{done['file_name']}"
    )
    assert "-" in head["ETag"]  # a multipart object

    # a signed link (no token) redirects to a presigned URL too
    r = httpx.get(entry["url"])
    assert r.status_code == 307 and "X-Amz-Signature=" in r.headers["location"]
    assert httpx.get(r.headers["location"]).content == data
    # expiry: once `file_expires_at` has passed, the janitor deletes the objects
    with psycopg.connect(pg_database) as conn:
        conn.execute(
            "UPDATE tasks SET file_expires_at = now() - interval '1 second' WHERE task_id = %s",
            (task["task_id"],),
        )
    gone = api.wait("acme", task["task_id"], until=lambda t: t["file_status"] == "DELETED")
    assert gone["status"] == "COMPLETED" and gone["finished_count"] == SOURCE_ROWS
    assert objects(s3_storage_url, "") == {}
    r = api.http.get(f"/v1/projects/acme/exports/{task['task_id']}/download")
    assert r.status_code == 404 and r.json()["error_code"] == "FILE_DELETED"


def test_parquet_partitions_are_assembled_on_s3(
    pg_database: str, pg_source: str, s3_storage_url: str, live_server: Any, tmp_path: Path
) -> None:
    """PostgreSQL -> Parquet in 4 partitions on S3: the parts' row groups are copied into
    one object (byte ranges of the part objects) under one footer."""
    server = live_server(store_url=pg_database, workers=2, storage_url=s3_storage_url)
    api = setup(server, pg_source)
    task = api.export(
        "acme",
        dataset_id="flights",
        format="parquet",
        format_options={"row_group_size": 30_000},
        parallelism=4,
    )
    done = api.wait("acme", task["task_id"], timeout=180)
    assert done["status"] == "COMPLETED", done
    data = download(api, "acme", task["task_id"])
    check_parquet_export(data, done, pg_source, 30_000, tmp_path)
    [entry] = [f for f in done["files"] if f["kind"] == "data"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["bytes"] == len(data)
    assert objects(s3_storage_url, "parts/") == {}
    assert open_uploads(s3_storage_url) == []
