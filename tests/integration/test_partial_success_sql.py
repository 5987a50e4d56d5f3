"""Item-level partial success for SQL exports: a partition that fails on some rows is
bisected down to the failing keys; every other row is exported exactly once, and each
bad row is one failed item with its key and the database's message (seed 002)."""

from __future__ import annotations

import csv
import io
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support import PG_ADMIN_URL, Api, LiveServer, drop_database, pg_url

ROWS = 300_000
BAD = (7, 200_000, 200_003)  # one in partition 0, two (not adjacent) in partition 2
QUERY = (
    "SELECT i.id, i.tag, 100 / (CASE WHEN i.id IN ({bad}) THEN 0 ELSE 1 END) AS boom FROM items i"
)


@pytest.fixture(scope="module")
def items_source() -> Iterator[str]:
    """A PostgreSQL source with ROWS rows keyed 1..ROWS, built in the database."""
    name = f"exportd_items_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items AS SELECT g::bigint AS id, md5(g::text) AS tag "
            f"FROM generate_series(1, {ROWS}) AS g"
        )
        conn.execute("ALTER TABLE items ADD PRIMARY KEY (id)")
        conn.execute("ANALYZE items")
    yield url
    drop_database(name)


def _setup(server: LiveServer, source: str, query: str) -> Api:
    admin = server.client()
    token = admin.project("acme")
    admin.dataset("acme", kind="sql", url=source, key="id", name="items", query=query)
    return server.client(token)


def _ids(body: bytes) -> Counter[int]:
    reader = csv.reader(io.StringIO(body.decode(), newline=""))
    header = next(reader)
    assert header == ["id", "tag", "boom"]
    return Counter(int(r[0]) for r in reader)


def test_bad_rows_are_isolated_and_every_other_row_exported_once(
    items_source: str, live_server: Any
) -> None:
    server = live_server(workers=2, max_attempts=2)
    api = _setup(server, items_source, QUERY.format(bad=", ".join(map(str, BAD))))
    task = api.export("acme", dataset_id="items", parallelism=4, allow_partial=True)
    done = api.wait("acme", task["task_id"], timeout=300)

    assert done["status"] == "COMPLETED_WITH_ERRORS", done["error_msg"]
    assert done["error_code"] == "PARTIAL_FAILURE"
    assert [p["status"] for p in done["partitions"]] == ["DONE"] * 4
    rows = [i for i in done["failed_items"] if i.get("key") is not None]
    assert [(i["key"], i["error_code"]) for i in rows] == [(k, "ROW_FAILED") for k in BAD]
    assert [i["partition"] for i in rows] == [0, 2, 2]
    assert all("division by zero" in i["error_msg"] for i in rows), rows
    assert done["failed_items"] == rows  # no partition failed as a whole
    assert done["failed_count"] == 3 and done["finished_count"] == ROWS - 3
    assert done["total_count"] == ROWS and done["total_is_estimate"] is False
    assert done["success_rate"] == 99.99  # 299,997 / 300,000, rounded down
    assert sum(i["rows"] for i in done["successful_items"]) == ROWS - 3

    body = api.http.get(f"/v1/projects/acme/exports/{task['task_id']}/download").content
    got = _ids(body)
    assert set(got.values()) == {1}  # every row once
    assert set(got) == set(range(1, ROWS + 1)) - set(BAD)

    manifest = api.http.get(f"/v1/projects/acme/exports/{task['task_id']}/manifest").json()
    assert manifest["status"] == "COMPLETED_WITH_ERRORS"
    assert manifest["failed_rows"] == 3 and manifest["total_rows"] == ROWS - 3
    assert [(i["partition"], i["key"]) for i in manifest["failed_items"]] == [
        (0, 7),
        (2, 200_000),
        (2, 200_003),
    ]


def test_without_allow_partial_a_bad_row_fails_the_task(
    items_source: str, live_server: Any
) -> None:
    """Nothing is bisected when partial success is not allowed: the task fails."""
    server = live_server(workers=2, max_attempts=1)
    api = _setup(server, items_source, QUERY.format(bad="7") + " WHERE i.id <= 1000")
    task = api.export("acme", dataset_id="items", parallelism=2)
    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "FAILED"
    assert done["error_code"] == "PARTITIONS_FAILED"
    assert [i.get("key") for i in done["failed_items"]] == [None]


def test_text_keys_are_bisected_at_the_median(items_source: str, live_server: Any) -> None:
    """A key that is not an integer (md5 text): ranges split at their median row's key."""
    server = live_server(workers=2, max_attempts=1)
    bad = (5, 1500, 2999)
    query = (
        "SELECT i.tag, i.id, 100 / (CASE WHEN i.id IN (5, 1500, 2999) THEN 0 ELSE 1 END) "
        "AS boom FROM items i WHERE i.id <= 3000"
    )
    admin = server.client()
    token = admin.project("acme")
    admin.dataset("acme", kind="sql", url=items_source, key="tag", name="tags", query=query)
    api = server.client(token)
    task = api.export("acme", dataset_id="tags", parallelism=2, allow_partial=True)
    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "COMPLETED_WITH_ERRORS", done["error_msg"]
    with psycopg.connect(items_source) as conn:
        tags = conn.execute(
            "SELECT tag FROM items WHERE id = ANY(%s) ORDER BY tag", (list(bad),)
        ).fetchall()
    assert sorted(i["key"] for i in done["failed_items"]) == [t for (t,) in tags]
    assert done["failed_count"] == 3 and done["finished_count"] == 2997
    body = api.http.get(f"/v1/projects/acme/exports/{task['task_id']}/download").content
    reader = csv.reader(io.StringIO(body.decode(), newline=""))
    next(reader)
    got = Counter(int(r[1]) for r in reader)
    assert set(got.values()) == {1} and set(got) == set(range(1, 3001)) - set(bad)


def test_a_query_that_fails_on_every_row_fails_the_partition(
    items_source: str, live_server: Any
) -> None:
    """Not some rows but (nearly) all: bisection gives up after a few keys rather than
    reading the query once per key."""
    server = live_server(workers=2, max_attempts=1)
    query = (  # row 1 computes (the dataset's registration reads it), no other row does
        "SELECT i.id, 1 / (CASE WHEN i.id = 1 THEN 1 ELSE 0 END) AS boom FROM items i "
        "WHERE i.id <= 100000"
    )
    api = _setup(server, items_source, query)
    task = api.export("acme", dataset_id="items", parallelism=2, allow_partial=True)
    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "FAILED", done
    assert [p["status"] for p in done["partitions"]] == ["FAILED", "FAILED"]
    assert all("division by zero" in i["error_msg"] for i in done["failed_items"])
