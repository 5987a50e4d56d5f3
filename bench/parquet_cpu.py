"""PostgreSQL -> Parquet in one run: ADBC + pyarrow by hand (`bench.tools adbc`) and
exportd with 1 and 2 workers (4 partitions), repeated, with wall time, worker peak RSS and
CPU accounting: user+sys seconds of the tool or of the workers, and of the PostgreSQL
backends serving the source database (sampled from /proc while the run lasts).

    python -m bench.parquet_cpu SOURCE_DB [--repeat 3] [--port 8797]

SOURCE_DB: a database built by `bench.data.build_pg` (table flights)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.__main__ import fresh_store, pg_url
from bench.measure import Exportd, peak_rss_mb

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + sys seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Backends:
    """CPU seconds used by the PostgreSQL backends of one database while it runs."""

    def __init__(self, db: str) -> None:
        self.tag = f" {db} "
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._scan()  # backends alive before: only what they use from now on counts
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _scan(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                title = Path(entry.path, "cmdline").read_bytes().decode(errors="replace")
                if not title.startswith("postgres:") or self.tag not in title:
                    continue
                pid = int(entry.name)
                cpu = cpu_seconds(pid)
            except (OSError, ValueError, IndexError):
                continue
            self.first.setdefault(pid, 0.0 if self._thread_started else cpu)
            self.last[pid] = cpu

    _thread_started = False

    def _run(self) -> None:
        self._thread_started = True
        while not self._stop.is_set():
            self._scan()
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._scan()
        return sum(self.last[p] - self.first[p] for p in self.last)


def adbc(source: str, db: str, out: Path) -> dict[str, Any]:
    backends = Backends(db)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bench.tools", "adbc", source, str(out)])
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.monotonic() - t0
    assert os.waitstatus_to_exitcode(status) == 0
    return {
        "secs": secs, "cpu": usage.ru_utime + usage.ru_stime, "pg": backends.stop(),
        "rss": usage.ru_maxrss / 1024,
    }  # fmt: skip


def exportd(ex: Exportd, db: str, workers: int) -> dict[str, Any]:
    with ex.workers(workers) as procs:
        before = [cpu_seconds(p.pid) for p in procs]
        backends = Backends(db)
        body = {"dataset_id": "flights", "format": "parquet", "parallelism": 4}
        secs, task = ex.run(body)
        cpu = sum(cpu_seconds(p.pid) - b for p, b in zip(procs, before, strict=True))
        pg = backends.stop()
        rss = max(peak_rss_mb(p.pid) for p in procs)
    assert task["status"] == "COMPLETED", task
    return {"secs": secs, "cpu": cpu, "pg": pg, "rss": rss, "rows": task["finished_count"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--port", type=int, default=8797)
    args = ap.parse_args()
    source = pg_url(args.db)
    with tempfile.TemporaryDirectory(prefix="bench-pq-") as tmp:
        ex = Exportd(Path(tmp) / "data", fresh_store(f"{args.db}_store"), port=args.port)
        try:
            ex.setup({"flights": {"url": source, "table": "flights", "key": "id"}})
            for i in range(args.repeat):
                runs = {
                    "adbc": adbc(source, args.db, Path(tmp) / "adbc.parquet"),
                    "w1": exportd(ex, args.db, 1),
                    "w2": exportd(ex, args.db, 2),
                }
                a, w1, w2 = runs["adbc"]["secs"], runs["w1"]["secs"], runs["w2"]["secs"]
                for name, r in runs.items():
                    print(
                        f"[{i}] {name:5} {r['secs']:6.2f}s  cpu {r['cpu']:6.2f}s "
                        f"({r['cpu'] / r['secs']:.2f} cores)  pg {r['pg']:5.2f}s  "
                        f"rss {r['rss']:5.0f} MB"
                    )
                print(
                    f"[{i}] ratios: 1w {a / w1:.2f}x adbc, 2w {a / w2:.2f}x adbc, 2w/1w {w1 / w2:.2f}x"
                )
        finally:
            ex.close()


if __name__ == "__main__":
    main()
