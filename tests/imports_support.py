"""Support for the import tests: flights-shaped rows written as CSV, JSON Lines and
Parquet, empty target tables on PostgreSQL, SQLite and MariaDB, and the rows read back."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from tests.support import FLIGHT_COLUMNS, Api, LiveServer, flight_rows

NULL = "\\N"
PG_TABLE = """CREATE TABLE flights (id bigint PRIMARY KEY, carrier varchar(2) NOT NULL,
   origin text NOT NULL, dest text NOT NULL, dep_delay integer,
   distance double precision NOT NULL, note text, dep_time timestamptz NOT NULL)"""
SQLITE_TABLE = """CREATE TABLE flights (id INTEGER PRIMARY KEY, carrier VARCHAR(2) NOT NULL,
   origin TEXT NOT NULL, dest TEXT NOT NULL, dep_delay INTEGER,
   distance REAL NOT NULL, note TEXT, dep_time TEXT NOT NULL)"""


def rows(n: int) -> list[tuple[Any, ...]]:
    return list(flight_rows(n))


def cell(v: Any) -> str:
    if v is None:
        return NULL
    if isinstance(v, datetime):
        return v.isoformat()
    return repr(v) if isinstance(v, float) else str(v)


def csv_text(data: list[tuple[Any, ...]], delimiter: str = ",") -> str:
    out = io.StringIO()
    w = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    w.writerow(FLIGHT_COLUMNS)
    for r in data:
        w.writerow([cell(v) for v in r])
    return out.getvalue()


def jsonl_text(data: list[tuple[Any, ...]]) -> str:
    lines = []
    for r in data:
        d = dict(zip(FLIGHT_COLUMNS, r, strict=True))
        d["dep_time"] = d["dep_time"].isoformat()
        lines.append(json.dumps(d))
    return "\n".join(lines) + "\n"


def write_parquet(path: Path, data: list[tuple[Any, ...]], row_group_size: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(zip(*data, strict=True))
    table = pa.table(
        {
            "id": pa.array(cols[0], pa.int64()),
            "carrier": pa.array(cols[1], pa.string()),
            "origin": pa.array(cols[2], pa.string()),
            "dest": pa.array(cols[3], pa.string()),
            "dep_delay": pa.array(cols[4], pa.int32()),
            "distance": pa.array(cols[5], pa.float64()),
            "note": pa.array(cols[6], pa.string()),
            "dep_time": pa.array(cols[7], pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


def pg_target(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(PG_TABLE)


def sqlite_target(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute(SQLITE_TABLE)
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def pg_table(url: str) -> Counter[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        got = conn.execute(f"SELECT {', '.join(FLIGHT_COLUMNS)} FROM flights").fetchall()
    return Counter(tuple(r) for r in got)


def sqlite_table(url: str) -> Counter[tuple[Any, ...]]:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    got = conn.execute(f"SELECT {', '.join(FLIGHT_COLUMNS)} FROM flights").fetchall()
    conn.close()
    return Counter((*r[:7], datetime.fromisoformat(r[7]).astimezone(UTC)) for r in got)


def table_rows(url: str) -> Counter[tuple[Any, ...]]:
    return sqlite_table(url) if url.startswith("sqlite") else pg_table(url)


def expected(data: list[tuple[Any, ...]]) -> Counter[tuple[Any, ...]]:
    return Counter(data)


def setup(server: LiveServer, target_url: str) -> Api:
    """Project `acme` with a writable `flights` dataset on `target_url`; a writer's Api."""
    admin = server.client()
    token = admin.project("acme")
    admin.dataset("acme", name="flights", kind="sql", url=target_url, table="flights",
                  key="id", writable=True)  # fmt: skip
    return server.client(token)


def upload(api: Api, name: str, data: bytes, project: str = "acme") -> dict[str, Any]:
    r = api.http.post(f"/v1/projects/{project}/uploads", params={"name": name}, content=data)
    assert r.status_code == 201, r.text
    return dict(r.json())


def start_import(api: Api, project: str = "acme", **body: Any) -> dict[str, Any]:
    r = api.http.post(f"/v1/projects/{project}/imports", json=body)
    assert r.status_code == 202, r.text
    return dict(r.json())


def report_rows(api: Api, task: dict[str, Any]) -> list[dict[str, str]]:
    names = [f["name"] for f in task["files"] if f["kind"] == "data"]
    assert names == ["rejected_rows.csv"], task["files"]
    r = api.http.get(
        f"/v1/projects/acme/imports/{task['task_id']}/download", params={"name": names[0]}
    )
    assert r.status_code == 200, r.text
    return list(csv.DictReader(io.StringIO(r.text)))
