"""A MariaDB table as a source, streamed through SQLAlchemy + PyMySQL (server-side cursor)."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from tests.support import flight_rows

MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
ROWS = 20_000


@pytest.fixture
def mariadb_source() -> Iterator[str]:
    name = f"exportd_{uuid.uuid4().hex[:8]}"
    try:
        conn = pymysql.connect(**MARIADB, autocommit=True)  # type: ignore[arg-type]
    except pymysql.err.OperationalError as exc:  # pragma: no cover - the machine provides it
        pytest.fail(f"MariaDB is not reachable on 127.0.0.1:3306: {exc}")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(
            f"""CREATE TABLE {name}.flights (id BIGINT PRIMARY KEY, carrier VARCHAR(8),
                origin VARCHAR(8), dest VARCHAR(8), dep_delay INT NULL, distance DOUBLE,
                note TEXT NULL, dep_time DATETIME(6)) CHARACTER SET utf8mb4"""
        )
        cur.executemany(
            f"INSERT INTO {name}.flights VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
            [(*r[:7], r[7].replace(tzinfo=None)) for r in flight_rows(ROWS)],
        )
    yield f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE {name}")
    conn.close()


def test_export_from_mariadb(mariadb_source: str, live_server: Any) -> None:
    server = live_server(workers=2)
    admin = server.client()
    token = admin.project("m")
    ds = admin.dataset("m", name="flights", url=mariadb_source, table="flights", key="id")
    assert {f["name"]: f["kind"] for f in ds["fields"]}["dep_time"] == "datetime"
    api = server.client(token)
    task = api.export(
        "m", dataset_id="flights", parallelism=3, filter=[{"carrier": {"in": ["AA", "DL"]}}]
    )
    done = api.wait("m", task["task_id"])
    assert done["status"] == "COMPLETED", done
    body = api.http.get(f"/v1/projects/m/exports/{task['task_id']}/download").content
    rows = list(csv.reader(io.StringIO(body.decode(), newline="")))[1:]
    want = [r for r in flight_rows(ROWS) if r[1] in ("AA", "DL")]
    assert [int(r[0]) for r in rows] == [w[0] for w in want]  # key order across partitions
    assert {r[6] for r in rows} == {"" if w[6] is None else w[6] for w in want}
    assert done["finished_count"] == len(want) == done["total_count"]
