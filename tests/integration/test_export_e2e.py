"""End to end over real HTTP: a 200,000-row table exported in 4 partitions, on the
embedded default (SQLite store, SQLite source) and on PostgreSQL (store and source)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from tests.conftest import SOURCE_ROWS
from tests.support import FLIGHT_COLUMNS, expected_cell


def source_rows(url: str, where: str = "") -> Counter[tuple[str, ...]]:
    """The source's rows, read by the test itself and rendered as CSV cells."""
    if url.startswith("postgresql"):
        with psycopg.connect(url) as conn:
            conn.execute("SET TIME ZONE 'UTC'")
            rows = conn.execute(
                f"SELECT {', '.join(FLIGHT_COLUMNS)} FROM flights {where}"
            ).fetchall()
    else:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                f"SELECT {', '.join(FLIGHT_COLUMNS)} FROM flights {where}"
            ).fetchall()
        engine.dispose()
    return Counter(tuple(expected_cell(v) for v in row) for row in rows)


def read_csv(data: bytes) -> tuple[list[str], Counter[tuple[str, ...]]]:
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header = next(reader)
    return header, Counter(tuple(r) for r in reader)


@pytest.fixture(params=["sqlite", "postgresql"])
def deployment(request: pytest.FixtureRequest) -> tuple[str | None, str]:
    """(store URL, source URL): the embedded default (SQLite both), or PostgreSQL both."""
    if request.param == "sqlite":
        return None, request.getfixturevalue("sqlite_source")
    return request.getfixturevalue("pg_database"), request.getfixturevalue("pg_source")


def test_large_export_is_exact(deployment: tuple[str | None, str], live_server: Any) -> None:
    store_url, source = deployment
    server = live_server(store_url=store_url, workers=2)
    admin = server.client()
    token = admin.project("acme")
    admin.dataset("acme", name="flights", kind="sql", url=source, table="flights", key="id")
    api = server.client(token)

    task = api.export("acme", dataset_id="flights", format="csv", parallelism=4)
    assert task["status"] == "PENDING"
    assert task["current_state"] == {"status_id": 0, "status": "Not started yet..."}
    done = api.wait("acme", task["task_id"])

    assert done["status"] == "COMPLETED", done
    assert done["current_state"] == {"status_id": 90, "status": "Completed"}
    assert done["currentState"] == {"statusId": 90, "status": "Completed"}
    assert done["file_status"] == "GENERATED"
    assert done["finished_count"] == SOURCE_ROWS
    assert done["total_count"] == SOURCE_ROWS and done["total_is_estimate"] is False
    assert done["failed_count"] == 0 and done["progress"] == 100.0
    assert len(done["partitions"]) == 4
    assert all(p["status"] == "DONE" and p["attempts"] == 1 for p in done["partitions"])
    assert sum(p["finished_count"] for p in done["partitions"]) == SOURCE_ROWS
    assert done["start_time"] and done["end_time"] and done["create_time"]

    r = api.http.get(f"/v1/projects/acme/exports/{done['task_id']}/download")
    assert r.status_code == 200
    header, got = read_csv(r.content)
    assert header == FLIGHT_COLUMNS
    assert got == source_rows(source)

    manifest = api.http.get(f"/v1/projects/acme/exports/{done['task_id']}/manifest").json()
    [entry] = manifest["files"]
    assert entry["sha256"] == hashlib.sha256(r.content).hexdigest()
    assert entry["bytes"] == len(r.content)
    assert entry["rows"] == SOURCE_ROWS == manifest["total_rows"]
    assert [p["rows"] for p in manifest["partitions"]] == [
        p["finished_count"] for p in done["partitions"]
    ]
    assert manifest["columns"] == FLIGHT_COLUMNS
    assert manifest["request"]["dataset_id"] == done["dataset_id"]

    after = api.task("acme", done["task_id"])
    assert after["is_download"] is True and after["download_count"] == 1


def test_filter_projection_and_renames_jsonl(
    pg_source: str, pg_database: str, live_server: Any
) -> None:
    server = live_server(store_url=pg_database)
    admin = server.client()
    token = admin.project("p")
    admin.dataset("p", name="flights", url=pg_source, table="flights", key="id")
    api = server.client(token)
    task = api.export(
        "p",
        dataset_id="flights",
        format="jsonl",
        fields=["id", {"name": "origin", "as": "from"}, "dep_delay"],
        filter=[{"origin": {"eq": "JFK"}, "dep_delay": {"gt": 100}}, {"id": {"in": [1, 2, 3]}}],
        parallelism=3,
        file_name="late-jfk.jsonl",
    )
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED", done
    assert done["columns"] == ["id", "from", "dep_delay"]
    body = api.http.get(f"/v1/projects/p/exports/{task['task_id']}/download").content
    rows = [json.loads(line) for line in body.decode().splitlines()]
    with psycopg.connect(pg_source) as conn:
        want = conn.execute(
            "SELECT id, origin, dep_delay FROM flights WHERE (origin = 'JFK' AND dep_delay > 100)"
            " OR id IN (1, 2, 3) ORDER BY id"
        ).fetchall()
    assert [(r["id"], r["from"], r["dep_delay"]) for r in rows] == want
    assert list(rows[0]) == ["id", "from", "dep_delay"]
    assert done["finished_count"] == len(want)


def check_parquet_export(
    data: bytes, done: dict[str, Any], source: str, row_group_size: int, tmp_path: Path
) -> None:
    """A PostgreSQL -> Parquet export of the flights read back by pyarrow and by DuckDB
    equal to the source, made of the partitions' row groups (copied through: each
    partition's rows in row groups of `row_group_size`, its last one shorter), with
    statistics that hold for the rows of their row group."""
    path = tmp_path / "flights.parquet"
    path.write_bytes(data)
    with psycopg.connect(source) as conn:
        want = conn.execute(
            f"SELECT {', '.join(FLIGHT_COLUMNS)} FROM flights ORDER BY id"
        ).fetchall()
    pf = pq.ParquetFile(path)
    table = pf.read()
    assert table.column_names == FLIGHT_COLUMNS
    got = sorted((tuple(r.values()) for r in table.to_pylist()), key=lambda r: r[0])
    assert got == want
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    by_duckdb = duckdb.sql(
        f"SELECT {', '.join(FLIGHT_COLUMNS[:-1])}, epoch_us(dep_time) "
        f"FROM read_parquet('{path}') ORDER BY id"
    ).fetchall()
    assert by_duckdb == [(*r[:-1], (r[-1] - epoch) // timedelta(microseconds=1)) for r in want]

    md = pf.metadata
    sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    want_sizes = []
    for p in done["partitions"]:
        n = p["finished_count"]
        want_sizes += [row_group_size] * (n // row_group_size) + [n % row_group_size] * bool(
            n % row_group_size
        )
    assert sorted(sizes) == sorted(want_sizes) and len(done["partitions"]) > 1
    start = 0
    for g, n in enumerate(sizes):
        ids = table.column("id").slice(start, n).to_pylist()
        start += n
        st = md.row_group(g).column(0).statistics
        assert st is not None and (st.min, st.max, st.null_count) == (min(ids), max(ids), 0)
        delay = md.row_group(g).column(FLIGHT_COLUMNS.index("dep_delay")).statistics
        nulls = sum(
            1 for v in table.column("dep_delay").slice(start - n, n).to_pylist() if v is None
        )
        assert delay is not None and delay.null_count == nulls
        assert md.row_group(g).column(0).compression == "ZSTD"


def test_postgresql_to_parquet_in_partitions_is_one_file_of_their_row_groups(
    pg_source: str, pg_database: str, live_server: Any, tmp_path: Path
) -> None:
    server = live_server(store_url=pg_database, workers=2)
    admin = server.client()
    token = admin.project("p")
    admin.dataset("p", name="flights", url=pg_source, table="flights", key="id")
    api = server.client(token)
    task = api.export(
        "p",
        dataset_id="flights",
        format="parquet",
        format_options={"row_group_size": 30_000},
        parallelism=4,
    )
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED", done
    r = api.http.get(f"/v1/projects/p/exports/{task['task_id']}/download")
    assert r.status_code == 200
    check_parquet_export(r.content, done, pg_source, 30_000, tmp_path)
    [entry] = [f for f in done["files"] if f["kind"] == "data"]
    assert entry["sha256"] == hashlib.sha256(r.content).hexdigest()
    assert entry["bytes"] == len(r.content)
