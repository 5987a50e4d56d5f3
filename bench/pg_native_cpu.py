"""One partition of PostgreSQL -> Parquet and -> CSV through each reader, in this process:
CPU seconds of the process (getrusage: every thread, the read-ahead included) and of the
PostgreSQL backends of the source database (/proc), per run and per 1M rows.

    python -m bench.pg_native_cpu [DB] [--rows 1000000] [--repeat 3]

Readers: Parquet through the native binary COPY reader or ADBC; CSV through the C drain
of the COPY."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from statistics import median
from typing import Any

from bench.__main__ import pg_url
from bench.parquet_cpu import Backends
from exportd.execution.heartbeat import Heartbeat
from exportd.fastpaths import fast_path
from exportd.fastpaths.adbc_parquet import AdbcParquet
from exportd.fastpaths.pg_copy_csv import PgCopyCsv
from exportd.formats import Column, get_format
from exportd.formats.splitting import Layout, PartOutput
from exportd.model import Dataset, TaskStatus
from exportd.sources import Selection
from exportd.sources.sql import SqlEngines, SqlSource, describe_sql
from exportd.storage.local import LocalStorage


def _sample(db: str, pipe: Connection) -> None:
    backends = Backends(db)
    pipe.send("ready")
    pipe.recv()
    pipe.send(backends.stop())


class BackendCpu:
    """`bench.parquet_cpu.Backends` in a process of its own: its /proc scans (50 a
    second) do not count in this process's CPU seconds."""

    def __init__(self, db: str) -> None:
        self.pipe, child = mp.get_context("spawn").Pipe()
        self.proc = mp.get_context("spawn").Process(target=_sample, args=(db, child))
        self.proc.start()
        assert self.pipe.recv() == "ready"

    def stop(self) -> float:
        self.pipe.send("stop")
        secs = float(self.pipe.recv())
        self.proc.join()
        return secs


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(db: str, src: SqlSource, fmt_name: str, native: bool, rows: int, tmp: Path) -> Any:
    fmt = get_format(fmt_name)
    names = [f["name"] for f in src.dataset.fields]
    cols = [Column(f["name"], f["kind"], f["type"]) for f in src.dataset.fields]
    path = fast_path(src, fmt, Layout(), cols)
    assert isinstance(path, AdbcParquet | PgCopyCsv), path
    export: Callable[..., None] = path.export
    if isinstance(path, AdbcParquet) and not native:
        export = path._export_adbc
    bounds = {"lo": 0, "hi": rows, "nulls": False, "kind": "int"}
    storage = LocalStorage(tmp / f"{fmt_name}{native}{time.monotonic_ns()}")
    backends = BackendCpu(db)
    c0, t0 = cpu(), time.monotonic()
    with (
        Heartbeat(lambda r, b: TaskStatus.RUNNING, 30, TaskStatus.RUNNING) as hb,
        PartOutput(storage, "parts/x/", fmt, cols, Layout()) as out,
    ):
        export(Selection(names, []), bounds, out, hb)
        result = out.finish()
    secs, client, pg = time.monotonic() - t0, cpu() - c0, backends.stop()
    return {"secs": secs, "cpu": client, "pg": pg, "rows": result.rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db", nargs="?", default="exportd_bench")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    engines = SqlEngines()
    url = pg_url(args.db)
    engine = engines.get(url)
    fields = describe_sql(engine, "flights", None)
    ds = Dataset(
        "b", "p", "flights", "sql", url, "flights", None, "id", fields, {}, datetime.now(UTC)
    )
    src = SqlSource(ds, engine)
    modes = [("parquet", True), ("parquet", False), ("csv", True)]
    seen: dict[tuple[str, bool], list[Any]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-pgn-") as tmp:
        for _ in range(args.repeat):
            for m in modes:  # alternated
                seen[m].append(one(args.db, src, m[0], m[1], args.rows, Path(tmp)))
    for (fmt, native), runs in seen.items():
        n = runs[0]["rows"] / 1e6
        name = {("parquet", True): "native binary COPY", ("parquet", False): "ADBC",
                ("csv", True): "C drain"}[(fmt, native)]  # fmt: skip
        print(
            f"{fmt:8} {name:19} rows {runs[0]['rows']:>9,}  wall {median(r['secs'] for r in runs):5.2f} s"
            f"  cpu/1M {median(r['cpu'] for r in runs) / n:5.2f} s"
            f"  pg/1M {median(r['pg'] for r in runs) / n:5.2f} s"
            f"  total/1M {median(r['cpu'] + r['pg'] for r in runs) / n:5.2f} s"
        )
    engines.dispose()


if __name__ == "__main__":
    main()
