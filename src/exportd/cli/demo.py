"""The demo dataset: realistic flights rows in a SQLite file, made on the spot."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

CARRIERS = [
    "AA",
    "AS",
    "B6",
    "DL",
    "EV",
    "F9",
    "FL",
    "HA",
    "MQ",
    "OO",
    "UA",
    "US",
    "VX",
    "WN",
    "YV",
    "9E",
]
ORIGINS = ["EWR", "JFK", "LGA"]
DESTS = [
    "ATL",
    "ORD",
    "LAX",
    "BOS",
    "MCO",
    "CLT",
    "SFO",
    "FLL",
    "MIA",
    "DCA",
    "DTW",
    "DFW",
    "RDU",
    "TPA",
    "DEN",
    "IAH",
    "MSP",
    "PBI",
    "BNA",
    "LAS",
    "SJU",
    "IAD",
    "BUF",
    "PHX",
]


def build_demo_database(path: Path, rows: int, seed: int = 2013) -> int:
    """Create (or reuse) `path` with a `flights` table of `rows` rows; returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        have = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='flights'"
        ).fetchone()[0]
        if have:
            return int(conn.execute("SELECT count(*) FROM flights").fetchone()[0])
        conn.execute(
            """CREATE TABLE flights (
                 id INTEGER PRIMARY KEY, year INTEGER, month INTEGER, day INTEGER,
                 carrier TEXT, flight INTEGER, tailnum TEXT, origin TEXT, dest TEXT,
                 sched_dep_time TEXT, dep_delay INTEGER, arr_delay INTEGER,
                 air_time REAL, distance INTEGER, canceled INTEGER)"""
        )
        rng = random.Random(seed)
        start = datetime(2013, 1, 1, 5, 0, tzinfo=UTC)

        def gen() -> Iterator[tuple[object, ...]]:
            for i in range(1, rows + 1):
                when = start + timedelta(minutes=rng.randrange(0, 365 * 24 * 60))
                canceled = rng.random() < 0.02
                dep = None if canceled else int(rng.gauss(12, 40))
                arr = None if canceled else (dep or 0) + int(rng.gauss(-5, 15))
                dist = rng.randrange(80, 4983)
                yield (
                    i, when.year, when.month, when.day, rng.choice(CARRIERS),
                    rng.randrange(1, 8500), f"N{rng.randrange(100, 999)}{rng.choice('ABCDEFJKUW')}",
                    rng.choice(ORIGINS), rng.choice(DESTS), when.isoformat(), dep, arr,
                    None if canceled else round(dist / 7.5 + rng.gauss(0, 8), 1), dist,
                    int(canceled),
                )  # fmt: skip

        conn.executemany("INSERT INTO flights VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", gen())
        conn.commit()
        return rows
    finally:
        conn.close()
