"""The native COPY readers (`_pgbinary`, fastpaths/pg_binary.py) on a real PostgreSQL:
the binary COPY -> Arrow reader gives exactly ADBC's record batches (types, metadata,
values) for every type it reads, NULLs and extremes included, and the same Parquet bytes;
the CSV drain gives the generic path's bytes; what it cannot read falls back (ADBC) or
fails (infinite dates) but never corrupts; server errors and statement timeouts end as
they do on the generic path; an end-to-end export equals the fast-paths-off one."""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exportd.errors import SourceError
from exportd.execution.heartbeat import Heartbeat
from exportd.fastpaths import fast_path, pg_binary
from exportd.fastpaths.adbc_parquet import AdbcParquet
from exportd.fastpaths.pg_copy_csv import CopyOut, PgCopyCsv
from exportd.formats import get_format
from exportd.formats.splitting import Layout, PartOutput
from exportd.model import Dataset, TaskStatus
from exportd.sources import Selection
from exportd.sources.sql import SqlEngines, SqlSource, describe_sql
from exportd.storage.local import LocalStorage
from tests.formats.test_fast_paths import columns_of, make_source, run, run_through

ALL = {"lo": None, "hi": None, "nulls": True}
TYPED = """CREATE TABLE typed (
    id int8 PRIMARY KEY, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, b bool, t text,
    vc varchar(20), bp char(5), nm name, d date, ts timestamp, tz timestamptz, by bytea,
    nu numeric, nd numeric(12, 2))"""
BIG = "x" * 1_500_000 + "é"  # a value past the chunk and message sizes


@pytest.fixture(scope="module")
def engines() -> Any:
    e = SqlEngines()
    yield e
    e.dispose()


@pytest.fixture()
def typed_db(pg_database: str) -> str:
    """Every type the reader reads: NULLs, extremes, NaN and infinite floats, empty and
    multibyte text, a 1.5 MB value, and 150,000 ordinary rows (3 batches)."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(TYPED)
        conn.execute("INSERT INTO typed (id) VALUES (0)")  # every column NULL
        conn.execute(
            """INSERT INTO typed VALUES
            (1, -32768, -2147483648, -9223372036854775808, 'NaN', '-Infinity', false, '',
             '', '', '', '0001-01-01', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00', '',
             'NaN', -9999999999.99),
            (2, 32767, 2147483647, 9223372036854775807, 'Infinity', 'NaN', true,
             'añ€😀 "quoted", line
break', 'żółw', 'ab', 'n', '9999-12-31', '9999-12-31 23:59:59.999999',
             '9999-12-31 23:59:59.999999+00', '\\x00ff10', 'Infinity', 0.01),
            (3, 0, 0, 0, -0.0, 1e308, NULL, %s, NULL, NULL, NULL, '4713-01-01 BC',
             '1970-01-01 00:00:00.000001', '1969-12-31 23:59:59.999999+00', NULL,
             '-0.000000000000000000000000000001', 0)""",
            [BIG],
        )
        conn.execute(
            """INSERT INTO typed SELECT g, g % 32000, g * 7, g::int8 * 1000003, g / 3.0, g / 7.0,
            g % 3 = 0, 't' || g, CASE WHEN g % 5 > 0 THEN 'v' || g END, 'c', 'n' || g,
            date '2000-01-01' + g, timestamp '2013-01-01' + g * interval '1 second',
            timestamptz '2013-01-01 00:00+00' + g * interval '1 minute',
            CASE WHEN g % 2 = 0 THEN decode(md5(g::text), 'hex') END,
            CASE WHEN g % 7 > 0 THEN (g::numeric * 10000000000 + 1) / 1000 END, g / 100.0
            FROM generate_series(10, 150009) g"""
        )
    return pg_database


def plain(table: pa.Table) -> list[dict[str, Any]]:
    """Rows with NaN made comparable, dates and timestamps as numbers (Python's dates
    end at the year 1)."""
    cols = [
        c.cast(pa.int32()) if pa.types.is_date32(c.type)
        else c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c
        for c in table.columns
    ]  # fmt: skip
    table = pa.table(cols, names=table.column_names)
    return [
        {k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in table.to_pylist()
    ]


def native_table(path: AdbcParquet, sel: Selection, bounds: dict[str, Any]) -> pa.Table:
    batches = [b for b in path._native_batches(sel, bounds) if b is not None]
    return pa.Table.from_batches(batches)


def adbc_table(path: AdbcParquet, sel: Selection, bounds: dict[str, Any]) -> pa.Table:
    return pa.Table.from_batches(list(path._batches(path.query(sel, bounds))))


def test_the_native_reader_is_bound_to_psycopgs_libpq() -> None:
    mod = pg_binary.native()
    assert mod is not None, "the C module is not built or cannot bind psycopg's libpq"
    assert mod.bind("/no/such/libpq.so") == psycopg.pq.version()  # bound once, kept


def test_native_batches_equal_adbcs(typed_db: str, engines: SqlEngines) -> None:
    src = make_source(engines, typed_db, "typed")
    names = [f["name"] for f in src.dataset.fields if f["name"] != "f4"]
    sel = Selection([*names, "f4"], [])
    path = AdbcParquet(src, columns_of(src, sel.columns))
    native, adbc = native_table(path, sel, ALL), adbc_table(path, sel, ALL)
    assert native.schema.equals(adbc.schema, check_metadata=True), (native.schema, adbc.schema)
    assert native.num_rows == adbc.num_rows == 150_004
    assert plain(native) == plain(adbc)
    rows = {r["id"]: r for r in plain(native)}
    assert rows[0] == {n: (0 if n == "id" else None) for n in sel.columns}
    assert rows[1]["i8"] == -(2**63) and rows[2]["i8"] == 2**63 - 1 and rows[1]["f4"] == "NaN"
    assert rows[2]["t"] == 'añ€😀 "quoted", line\nbreak' and rows[2]["by"] == b"\x00\xff\x10"
    assert rows[3]["t"] == BIG and rows[2]["bp"] == "ab   "
    assert (rows[1]["nu"], rows[2]["nu"], rows[3]["nu"]) == ("nan", "inf", "-0." + "0" * 29 + "1")
    assert (rows[1]["nd"], rows[2]["nd"], rows[3]["nd"]) == ("-9999999999.99", "0.01", "0.00")


def test_native_batches_are_many_and_bounded(typed_db: str, engines: SqlEngines) -> None:
    src = make_source(engines, typed_db, "typed")
    sel = Selection(["id", "t"], [])
    path = AdbcParquet(src, columns_of(src, sel.columns))
    sizes = [b.num_rows for b in path._native_batches(sel, ALL) if b is not None]
    assert sum(sizes) == 150_004 and len(sizes) >= 3
    assert max(sizes) == pg_binary.BATCH_ROWS
    # an empty partition: no batch, no error
    empty = {"lo": -10, "hi": -1, "nulls": False, "kind": "int"}
    assert [b for b in path._native_batches(sel, empty) if b is not None] == []


def test_parquet_bytes_equal_adbcs_and_the_native_path_ran(
    typed_db: str, engines: SqlEngines, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = make_source(engines, typed_db, "typed")
    names = [f["name"] for f in src.dataset.fields if f["name"] != "f4"]
    fmt = get_format("parquet")
    sel = Selection(names, [])
    path = fast_path(src, fmt, Layout(), columns_of(src, names))
    assert isinstance(path, AdbcParquet)
    bounds = {"lo": 0, "hi": 120_000, "nulls": False, "kind": "int"}
    outputs = []
    for export in (path.export, path._export_adbc):
        storage = LocalStorage(tmp_path / export.__name__)
        with (
            caplog.at_level(logging.INFO, logger="exportd.fastpaths"),
            Heartbeat(lambda r, b: TaskStatus.RUNNING, 30, TaskStatus.RUNNING) as hb,
            PartOutput(storage, "parts/x/", fmt, columns_of(src, names), Layout()) as out,
        ):
            export(sel, bounds, out, hb)
            result = out.finish()
        outputs.append(result.sha256)
    assert outputs[0] == outputs[1]
    assert "native binary COPY reader: 16 columns" in caplog.text
    # and the generic path reads the same values (but a date BC, which psycopg refuses,
    # and numeric NaN: "NaN" there, "nan" from ADBC and so from the native reader)
    sel = Selection([n for n in names if n not in ("d", "nu")], [])
    slow = pq.read_table(io.BytesIO(run(tmp_path / "g", src, fmt, sel, bounds, fast=False)))
    fast = pq.read_table(io.BytesIO(run(tmp_path / "f", src, fmt, sel, bounds, fast=True)))
    assert fast.schema == slow.schema and plain(fast) == plain(slow)


def test_other_types_take_adbc(
    pg_database: str, engines: SqlEngines, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute('CREATE TABLE n (id int8 PRIMARY KEY, u "char", note text)')
        conn.execute(
            "INSERT INTO n SELECT g, chr(65 + g % 26)::\"char\", 'n' || g FROM generate_series(1, 500) g"
        )
    src = make_source(engines, pg_database, "n")
    fmt = get_format("parquet")
    sel = Selection(["id", "u", "note"], [])
    with caplog.at_level(logging.INFO, logger="exportd.fastpaths"):
        fast = pq.read_table(io.BytesIO(run(tmp_path, src, fmt, sel, ALL, fast=True)))
    assert "native binary COPY reader steps aside: column 'u' has type OID 18" in (caplog.text)
    slow = pq.read_table(io.BytesIO(run(tmp_path, src, fmt, sel, ALL, fast=False)))
    assert fast.schema == slow.schema and fast.to_pylist() == slow.to_pylist()
    assert fast.num_rows == 500


@pytest.mark.parametrize(
    "value", ["'infinity'::date", "'-infinity'::date", "'infinity'::timestamptz"]
)
def test_infinite_dates_fail_the_partition_instead_of_corrupting(
    pg_database: str, engines: SqlEngines, tmp_path: Path, value: str
) -> None:
    kind = "date" if "date" in value else "timestamptz"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE inf (id int8 PRIMARY KEY, v {kind})")
        conn.execute(f"INSERT INTO inf VALUES (1, now()), (2, {value})")
    src = make_source(engines, pg_database, "inf")
    with pytest.raises(SourceError) as err:
        run(tmp_path, src, get_format("parquet"), Selection(["id", "v"], []), ALL, fast=True)
    assert err.value.error_code == "SOURCE_QUERY_FAILED"
    assert "infinity has no Arrow value" in err.value.error_msg


def test_csv_drain_matches_the_generic_path(
    typed_db: str, engines: SqlEngines, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = make_source(engines, typed_db, "typed")
    # not d (psycopg refuses dates BC) nor f4 (below: a real takes the generic path)
    names = [f["name"] for f in src.dataset.fields if f["name"] not in ("d", "f4")]
    fmt = get_format("csv")
    sel = Selection(names, [])
    assert isinstance(fast_path(src, fmt, Layout(), columns_of(src, names)), PgCopyCsv)
    fast = run(tmp_path, src, fmt, sel, ALL, fast=True)
    assert fast == run(tmp_path, src, fmt, sel, ALL, fast=False)
    assert BIG.encode() in fast and fast.count(b"\n") > 150_004
    # a real (float4) column: the COPY path steps aside, the bytes are the generic path's
    with_real = Selection([*names, "f4"], [])
    assert fast_path(src, fmt, Layout(), columns_of(src, with_real.columns)) is None
    real = run(tmp_path / "real", src, fmt, with_real, ALL, fast=False)
    assert b"3.3333333" in real and b"3.3333332538604736" not in real  # 10 / 3.0 as a real


def test_csv_drain_chunks_and_counts(typed_db: str) -> None:
    """The C drain hands over chunks of about COPY_CHUNK bytes, whole rows or not, and
    the COPY's row count; the bytes are psycopg's own COPY's and the Python loop's."""
    sql = b"COPY (SELECT * FROM typed ORDER BY id) TO STDOUT (FORMAT csv)"
    with psycopg.connect(typed_db) as conn:
        copy = CopyOut(conn)
        chunks = [c for c in copy.chunks(sql) if c]
        conn.rollback()
        with conn.cursor() as cur, cur.copy(sql.decode()) as cp:
            expected = b"".join(bytes(b) for b in cp)
        conn.rollback()
        loop = CopyOut(conn)  # the Python loop, which runs without the C module
        loop._start(sql)
        looped = b"".join(loop._data())
        loop._end()
    assert b"".join(chunks) == expected == looped and copy.rows == loop.rows == 150_004
    assert len(chunks) > 5 and max(len(c) for c in chunks[:-1]) < 4 << 20


def _low_water(conn: psycopg.Connection[Any]) -> int:
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


@pytest.mark.parametrize("fmt", ["binary", "csv"])
def test_the_readers_raise_the_low_water_mark_while_they_read_and_put_it_back(
    pg_database: str, fmt: str
) -> None:
    """While a C reader waits on the server its socket's SO_RCVLOWAT is raised (poll
    wakes per 256 KB, not per 8 KB segment); when the call returns it is what it was, and
    psycopg's next query on the connection is answered. Rows that trickle in (fewer bytes
    than the mark, a pause before each; each more than the server's 8 KB send buffer, so
    that it is sent before the pause) all arrive."""
    trickle = """SELECT g, t FROM (SELECT g, repeat('r', 20000) || g AS t, pg_sleep(0.4)
                 FROM generate_series(1, 4) g) q"""
    texts = ["r" * 20000 + str(g) for g in range(1, 5)]
    sql = f"COPY ({trickle}) TO STDOUT (FORMAT {fmt})".encode()
    with psycopg.connect(pg_database) as conn:
        before, seen, stop = _low_water(conn), set(), threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.add(_low_water(conn))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            copy = CopyOut(conn)
            if fmt == "csv":
                got = b"".join(copy.chunks(sql)).decode()
                assert got.splitlines() == [f"{g},{t}" for g, t in enumerate(texts, 1)]
            else:
                with conn.cursor() as cur:
                    cur.execute(f"SELECT * FROM ({trickle}) AS q LIMIT 0")
                    how, why = pg_binary.plan(cur.description or [], conn.info.encoding)
                assert how is not None, why
                batches = [b for b in pg_binary.record_batches(copy, sql, how) if b is not None]
                got_rows = pa.Table.from_batches(batches).to_pydict()
                assert got_rows == {"g": [1, 2, 3, 4], "t": texts}
            conn.rollback()
        finally:
            stop.set()
            watcher.join()
        assert before == _low_water(conn) == 1
        assert max(seen) >= 128 << 10, seen  # raised while the server paused
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def test_server_errors_mid_copy_and_timeouts_are_the_generic_paths(
    pg_source: str, pg_database: str, live_server: Any
) -> None:
    """Division by zero at row 1,500 and a statement timeout, mid-COPY: the same status
    and partition errors with the fast paths (native readers) as without."""
    outcomes: dict[bool, list[tuple[str, str, list[str]]]] = {}
    for fast in (True, False):
        server = live_server(store_url=pg_database if fast else None, fast_paths=fast,
                             max_attempts=1)  # fmt: skip
        admin = server.client()
        admin.project("p")
        boom = "SELECT id, carrier, 1 / (id - 1500) AS boom FROM flights WHERE id <= 4000"
        admin.dataset("p", name="boom", url=pg_source, query=boom, key="id")
        slow = """SELECT id, 'v' || coalesce((CASE WHEN id = 3000 THEN pg_sleep(3) END)::text, '')
                  AS s FROM flights"""  # text in every row: a text column for the fast paths
        admin.dataset("p", name="slow", url=pg_source, query=slow, key="id",
                      statement_timeout_seconds=1)  # fmt: skip
        seen = []
        for ds in ("boom", "slow"):
            for fmt in ("parquet", "csv"):
                task = admin.export("p", dataset_id=ds, format=fmt, parallelism=1)
                done = admin.wait("p", task["task_id"])
                msgs = [p["error_msg"] or "" for p in done["partitions"]]
                seen.append((done["status"], done["error_code"] or "", msgs))
        outcomes[fast] = seen
    assert outcomes[True] == outcomes[False]
    assert [s for s, _, _ in outcomes[True]] == ["FAILED"] * 4
    msgs = [m for _, _, ms in outcomes[True] for m in ms]
    assert sum("division by zero" in m for m in msgs) == 2
    assert sum("statement timeout" in m for m in msgs) == 2


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_end_to_end_native_and_generic_files_are_identical(
    pg_source: str, pg_database: str, live_server: Any, tmp_path: Path, fmt: str
) -> None:
    bodies = []
    for fast in (True, False):
        server = live_server(store_url=pg_database if fast else None, fast_paths=fast)
        admin = server.client()
        token = admin.project("f")
        admin.dataset("f", name="flights", url=pg_source, table="flights", key="id")
        api = server.client(token)
        task = api.export("f", dataset_id="flights", format=fmt, parallelism=3,
                          filter={"carrier": {"in": ["AA", "DL", "UA"]}})  # fmt: skip
        done = api.wait("f", task["task_id"])
        assert done["status"] == "COMPLETED", done
        body = api.http.get(f"/v1/projects/f/exports/{task['task_id']}/download").content
        bodies.append((body, done["finished_count"]))
    (fast_body, fast_n), (slow_body, slow_n) = bodies
    assert fast_n == slow_n > 10_000
    if fmt == "csv":
        assert hashlib.sha256(fast_body).digest() == hashlib.sha256(slow_body).digest()
    else:
        fast_t, slow_t = (pq.read_table(io.BytesIO(b)) for b in (fast_body, slow_body))
        assert fast_t.schema == slow_t.schema and plain(fast_t) == plain(slow_t)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_cancel_stops_a_native_read_waiting_on_the_server(
    pg_source: str, live_server: Any, fmt: str
) -> None:
    """The readers wait on the socket at most FLUSH_SECONDS at a time: a cancel during a
    30 s stall of the server ends the task CANCELED long before the stall ends."""
    server = live_server(max_attempts=1)
    admin = server.client()
    admin.project("p")
    # the COPY stalls (not the planning's reads of the same query)
    # (text in every row: the dataset's description sees a text column, as the COPY needs)
    stall = """SELECT id, 'v' || coalesce((CASE WHEN id = 2000 AND current_query() LIKE 'COPY%'
               THEN pg_sleep(30) END)::text, '') AS s FROM flights"""
    admin.dataset("p", name="stall", url=pg_source, query=stall, key="id")
    task = admin.export("p", dataset_id="stall", format=fmt, parallelism=1)
    tid = task["task_id"]
    admin.wait("p", tid, until=lambda t: t["current_state"]["status_id"] == 60)
    time.sleep(1)  # into the stall
    r = admin.http.post(f"/v1/projects/p/exports/{tid}/cancel")
    assert r.status_code == 202, r.text
    done = admin.wait("p", tid, timeout=25)
    assert done["status"] == "CANCELED", done


def test_a_dataset_with_max_connections_reads_natively_or_through_its_pool(
    typed_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dataset with `max_connections` never connects outside its pool: its role here
    allows one connection, which the pool holds; the native reader reads the typed
    table on it, and a table it cannot read goes through the generic rows (ADBC's own
    connection would be refused)."""
    role = f"lim_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(typed_db, autocommit=True) as conn:
        conn.execute('CREATE TABLE n (id int8 PRIMARY KEY, u "char", note text)')
        conn.execute(
            "INSERT INTO n SELECT g, chr(65 + g % 26)::\"char\", 'n' || g FROM generate_series(1, 300) g"
        )
        conn.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
        conn.execute(f"GRANT SELECT ON typed, n TO {role}")
    url = typed_db.replace("//postgres@", f"//{role}@")
    engines = SqlEngines()
    try:
        engine = engines.get(url, 1)
        fmt = get_format("parquet")
        for table, names in (("typed", ["id", "i8", "t", "tz", "by"]), ("n", ["id", "u"])):
            fields = describe_sql(engine, table, None)
            ds = Dataset("ds", "p", table, "sql", url, table, None, "id", fields,
                         {"max_connections": 1}, datetime.now(UTC))  # fmt: skip
            src = SqlSource(ds, engine)
            path = fast_path(src, fmt, Layout(), columns_of(src, names))
            assert isinstance(path, AdbcParquet) and path.pooled
            sel = Selection(names, [])
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="exportd.fastpaths"):
                fast = pq.read_table(io.BytesIO(run(tmp_path / table, src, fmt, sel, ALL, True)))
            slow = pq.read_table(io.BytesIO(run(tmp_path / table, src, fmt, sel, ALL, False)))
            assert fast.schema == slow.schema and plain(fast) == plain(slow)
            assert fast.num_rows == (150_004 if table == "typed" else 300)
            native = "native binary COPY reader: " in caplog.text
            assert native == (table == "typed"), caplog.text
    finally:
        engines.dispose()
        with psycopg.connect(typed_db, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON typed, n FROM {role}")
            conn.execute(f"DROP ROLE {role}")


STAMPS = """CREATE TABLE stamps (id int8 PRIMARY KEY, t text, ts timestamp, tz timestamptz)"""
TRICKY_TEXT = ["=SUM(A1)", "-5", "+1,2", '@a"b', "\tx", "\rx", '"=q', "-", "'=x", "x=", ""]


@pytest.mark.parametrize(
    ("options", "kinds"),
    [
        ({}, b"\x00\x03\x01\x02"),
        ({"delimiter": ";", "null": "NULL"}, b"\x00\x03\x01\x02"),
        ({"delimiter": "|", "quote": "'"}, b"\x00\x00\x01\x02"),  # a ' would need quoting
        ({"delimiter": "\t", "null": "-"}, b"\x00\x00\x01\x02"),  # "-" is quoted, "'-" not
        ({"delimiter": " "}, b"\x00\x03\x00\x00"),  # COPY would quote the stamps
        ({"delimiter": ":", "spreadsheet_safe": False}, b""),
    ],
)
def test_fields_rewritten_by_the_drain_are_the_sqls_own(
    pg_database: str, engines: SqlEngines, tmp_path: Path, options: dict[str, Any], kinds: bytes
) -> None:
    """The C drain's rewrites (`drain_kinds`: UTC timestamps as ISO 8601, text made
    spreadsheet-safe) give the bytes of the SQL rewrites they replace, on every value:
    fractions, the years 1 and 9999, the JSON route's (BC, 10000, infinities, left as
    they come), NULL, and text with every trigger, quoted or not, with the delimiter,
    quotes and newlines."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(STAMPS)
        conn.execute(
            """INSERT INTO stamps VALUES
            (1, 'a,b;c|d e:f ''q'' "dq"
line', '2013-01-01 05:00:00', '2013-01-01 05:00:00+00'),
            (2, '', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00'),
            (3, NULL, '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59.999999+00'),
            (4, 'x', '1970-01-01 00:00:00.5', '1969-12-31 23:59:59.123+00'),
            (5, 'y', '4713-01-01 00:00:00 BC', '0044-03-15 12:00:00+00 BC'),
            (6, 'z', '10000-01-01 00:00:00', '12000-06-01 00:00:00+00'),
            (7, 'w', 'infinity', '-infinity'),
            (8, NULL, NULL, NULL)"""
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO stamps (id, t) VALUES (%s, %s)",
                [(100 + i, t) for i, t in enumerate(TRICKY_TEXT)],
            )
        conn.execute(
            """INSERT INTO stamps SELECT g, CASE WHEN g % 3 = 0 THEN '=' END || 't' || g,
            timestamp '2013-01-01' + g * interval '1.25 second',
            timestamptz '2013-01-01 00:00+00' + g * interval '1 minute'
            FROM generate_series(200, 20199) g"""
        )
    src = make_source(engines, pg_database, "stamps")
    fmt = get_format("csv", options)
    names = ["id", "t", "ts", "tz"]
    sel = Selection(names, [])
    drained = fast_path(src, fmt, Layout(), columns_of(src, names))
    assert isinstance(drained, PgCopyCsv)
    assert drained.drained == kinds
    statement = drained.statement(sel, ALL)[0]
    stamps_drained = kinds[2:] == b"\x01\x02"
    safe = options.get("spreadsheet_safe", True)
    assert ("replace(" in statement) != stamps_drained
    assert ("ascii(" in statement) == (safe and kinds[1:2] != b"\x03")
    in_sql = fast_path(src, fmt, Layout(), columns_of(src, names))
    assert isinstance(in_sql, PgCopyCsv)
    in_sql.drained = b""  # the SQL rewrites, as before the drain's
    got = run_through(tmp_path / "drain", src, fmt, sel, ALL, drained)
    assert got == run_through(tmp_path / "sql", src, fmt, sel, ALL, in_sql)
    assert got.count(b"\n") > 20_000
    if stamps_drained:
        assert b"9999-12-31T23:59:59.999999+00:00" in got and b"1970-01-01T00:00:00.5" in got
        assert b"infinity" in got and b"0044-03-15 12:00:00+00 BC" not in got
    if safe and "quote" not in options:  # (with the quote ', every ' doubles)
        assert b"'=SUM(A1)" in got and b"'=t201" in got and b"''=x" not in got
