"""The fast paths produce what the generic path produces: PostgreSQL COPY -> the same CSV
bytes, ADBC -> the same Parquet values and types. Both paths run here on the same real
PostgreSQL data (the tricky golden table and the flights table), partition by partition,
with filters, key ranges and options; and an end-to-end export over HTTP with and without
fast paths gives identical files."""

from __future__ import annotations

import gzip
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

from exportd.execution.heartbeat import Heartbeat
from exportd.fastpaths import fast_path
from exportd.fastpaths.adbc_parquet import AdbcParquet
from exportd.fastpaths.pg_copy_csv import PgCopyCsv
from exportd.formats import Column, Format, get_format
from exportd.formats.splitting import Layout, PartOutput, read_index
from exportd.model import Dataset, TaskStatus
from exportd.sources import Selection
from exportd.sources.filters import validate_filter
from exportd.sources.sql import SqlEngines, SqlSource, describe_sql
from exportd.storage.local import LocalStorage
from tests.formats.test_golden import COLUMNS as TRICKY_COLUMNS
from tests.formats.test_golden import tricky_source  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def engines() -> Any:
    e = SqlEngines()
    yield e
    e.dispose()


def make_source(engines: SqlEngines, url: str, table: str) -> SqlSource:
    engine = engines.get(url)
    fields = describe_sql(engine, table, None)
    ds = Dataset("ds", "p", table, "sql", url, table, None, "id", fields, {}, datetime.now(UTC))
    return SqlSource(ds, engine)


def columns_of(src: SqlSource, names: list[str]) -> list[Column]:
    fields = {f["name"]: f for f in src.dataset.fields}
    return [Column(n, fields[n]["kind"], fields[n]["type"]) for n in names]


def run(
    tmp_path: Path, src: SqlSource, fmt: Format, sel: Selection, bounds: dict[str, Any], fast: bool
) -> bytes:
    """One partition through the fast path or the generic one; the assembled file's bytes."""
    cols = columns_of(src, sel.columns)
    path = fast_path(src, fmt, Layout(), cols) if fast else None
    assert (path is not None) == fast
    return run_through(tmp_path / ("fast" if fast else "slow"), src, fmt, sel, bounds, path)


def run_through(
    tmp: Path, src: SqlSource, fmt: Format, sel: Selection, bounds: dict[str, Any], path: Any
) -> bytes:
    """One partition through `path` (None: the generic path) into storage under `tmp`;
    the assembled file's bytes."""
    storage = LocalStorage(tmp)
    cols = columns_of(src, sel.columns)
    with (
        Heartbeat(lambda r, b: TaskStatus.RUNNING, 30, TaskStatus.RUNNING) as hb,
        PartOutput(storage, "parts/x/", fmt, cols, Layout()) as out,
    ):
        if path is not None:
            path.export(sel, bounds, out, hb)
        else:
            for batch in src.read(sel, bounds, 1000):
                out.write(batch)
        result = out.finish()
    fmt.assemble(storage, "out", read_index(storage, result.key), cols)
    return (tmp / "out").read_bytes()


CSV_OPTIONS = [
    {},
    {"delimiter": ";", "null": "NULL", "spreadsheet_safe": False, "timezone": "Asia/Kolkata"},
    {"quote": "'", "header": False, "bom": True, "timezone": "America/New_York"},
]


@pytest.mark.parametrize("options", CSV_OPTIONS)
@pytest.mark.parametrize("name", ["csv", "tsv"])
def test_copy_csv_is_byte_identical_on_tricky_values(
    tricky_source: str,  # noqa: F811
    engines: SqlEngines,
    tmp_path: Path,
    options: dict[str, Any],
    name: str,
) -> None:
    src = make_source(engines, tricky_source, "tricky")
    fmt = get_format(name, options)
    sel = Selection(TRICKY_COLUMNS, [])
    assert isinstance(fast_path(src, fmt, Layout(), columns_of(src, TRICKY_COLUMNS)), PgCopyCsv)
    slow = run(tmp_path, src, fmt, sel, {"lo": None, "hi": None, "nulls": True}, fast=False)
    fast = run(tmp_path, src, fmt, sel, {"lo": None, "hi": None, "nulls": True}, fast=True)
    assert fast == slow
    assert b"12345678901234567890.1234567891" in fast


EDGE_TIMES = [
    "0001-01-01 00:00:00", "0999-12-31 23:59:59.5", "1970-01-01 00:00:00.000001",
    "2013-06-01 23:59:59.123456", "9999-12-31 12:59:59.999999",
]  # fmt: skip


@pytest.mark.parametrize("options", [{}, {"timezone": "Asia/Kolkata"}])
def test_copy_csv_timestamps_match_at_the_edges_of_the_calendar(
    pg_database: str, engines: SqlEngines, tmp_path: Path, options: dict[str, Any]
) -> None:
    """In UTC, COPY renders timestamps through the ISO DateStyle instead of JSON: the
    same text for the first and last years, fractions and naive timestamps."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE edge (id int PRIMARY KEY, ts timestamptz, tsn timestamp)")
        for i, t in enumerate(EDGE_TIMES):
            conn.execute(
                "INSERT INTO edge VALUES (%s, %s::timestamp AT TIME ZONE 'UTC', %s)", [i, t, t]
            )
        conn.execute("INSERT INTO edge VALUES (99, NULL, NULL)")
    src = make_source(engines, pg_database, "edge")
    fmt = get_format("csv", options)
    sel = Selection(["id", "ts", "tsn"], [])
    bounds = {"lo": None, "hi": None, "nulls": True}
    fast = run(tmp_path, src, fmt, sel, bounds, fast=True)
    assert fast == run(tmp_path, src, fmt, sel, bounds, fast=False)
    if not options:
        assert b"0,0001-01-01T00:00:00+00:00,0001-01-01T00:00:00\n" in fast
        assert b"9999-12-31T12:59:59.999999+00:00" in fast


def test_copy_csv_with_filter_projection_bounds_and_gzip(
    pg_source: str, engines: SqlEngines, tmp_path: Path
) -> None:
    src = make_source(engines, pg_source, "flights")
    kinds = {f["name"]: f["kind"] for f in src.dataset.fields}
    flt = validate_filter(
        [{"origin": {"in": ["JFK", "LGA"]}, "note": {"like": "%a%"}}, {"dep_delay": {"gt": 250}}],
        kinds,
    )
    sel = Selection(["dep_time", "id", "note", "distance", "carrier"], flt)
    fmt = get_format("csv", {}, "gzip")
    bounds = {"lo": 20_000, "hi": 120_000, "nulls": False, "kind": "int"}
    slow = gzip.decompress(run(tmp_path, src, fmt, sel, bounds, fast=False))
    fast = gzip.decompress(run(tmp_path, src, fmt, sel, bounds, fast=True))
    assert fast == slow
    assert slow.count(b"\n") > 1000


def test_copy_csv_of_an_empty_partition_is_an_empty_part(
    pg_source: str, engines: SqlEngines, tmp_path: Path
) -> None:
    src = make_source(engines, pg_source, "flights")
    sel = Selection(["id", "carrier"], [])
    bounds = {"lo": -10, "hi": 0, "nulls": False, "kind": "int"}
    fast = run(tmp_path, src, get_format("csv"), sel, bounds, fast=True)
    assert fast == run(tmp_path, src, get_format("csv"), sel, bounds, fast=False) == b"id,carrier\n"


def test_copy_steps_aside_when_it_cannot_match(pg_source: str, engines: SqlEngines) -> None:
    src = make_source(engines, pg_source, "flights")
    cols = columns_of(src, ["id", "note"])
    assert fast_path(src, get_format("csv", {"line_ending": "crlf"}), Layout(), cols) is None
    assert fast_path(src, get_format("csv", {"datetime_format": "%Y"}), Layout(), cols) is None
    assert fast_path(src, get_format("csv"), Layout(max_rows=10), cols) is None
    assert fast_path(src, get_format("csv"), Layout(), cols, enabled=False) is None
    assert fast_path(src, get_format("jsonl"), Layout(), cols) is None


def test_adbc_parquet_reads_back_identical(
    tricky_source: str,  # noqa: F811
    engines: SqlEngines,
    tmp_path: Path,
) -> None:
    src = make_source(engines, tricky_source, "tricky")
    fmt = get_format("parquet")
    assert isinstance(fast_path(src, fmt, Layout(), columns_of(src, TRICKY_COLUMNS)), AdbcParquet)
    sel = Selection(TRICKY_COLUMNS, validate_filter({"id": {"nin": [7]}}, {"id": "int"}))
    bounds = {"lo": 2, "hi": None, "nulls": True, "kind": "int"}
    tables = []
    for fast in (False, True):
        data = run(tmp_path, src, fmt, sel, bounds, fast=fast)
        path = tmp_path / f"{fast}.parquet"
        path.write_bytes(data)
        tables.append(pq.read_table(path))
    slow, fast_t = tables
    assert fast_t.schema == slow.schema
    assert fast_t.to_pylist() == slow.to_pylist()
    assert slow.num_rows == 10  # ids 2..12 without 7


def test_end_to_end_fast_and_generic_files_are_identical(
    pg_source: str, pg_database: str, live_server: Any
) -> None:
    digests = []
    for fast in (True, False):
        server = live_server(store_url=pg_database if fast else None, fast_paths=fast)
        admin = server.client()
        token = admin.project("f")
        admin.dataset("f", name="flights", url=pg_source, table="flights", key="id")
        api = server.client(token)
        task = api.export("f", dataset_id="flights", format="csv", parallelism=3,
                          filter={"carrier": {"in": ["AA", "DL"]}})  # fmt: skip
        done = api.wait("f", task["task_id"])
        assert done["status"] == "COMPLETED", done
        body = api.http.get(f"/v1/projects/f/exports/{task['task_id']}/download").content
        digests.append((hashlib.sha256(body).hexdigest(), done["finished_count"]))
    assert digests[0] == digests[1]
    assert digests[0][1] > 10_000
