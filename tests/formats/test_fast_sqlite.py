"""The SQLite fast path (ADBC + pyarrow.compute) writes the same CSV bytes as the generic
path: on a table of tricky values (SQLite's dynamic typing included), with every CSV/TSV
option, by partition and filter; a value the fast path cannot render exactly sends the
partition to the generic path (same bytes again); and floats are rendered as `float_text`
renders them, value for value, over many random doubles."""

from __future__ import annotations

import random
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from _pytest.logging import LogCaptureFixture

from exportd.fastpaths import fast_path
from exportd.fastpaths.sqlite_csv import SqliteArrowCsv, affinity
from exportd.formats import get_format
from exportd.formats.arrow_csv import ArrowCsv
from exportd.formats.cells import float_text
from exportd.formats.splitting import Layout
from exportd.formats.text import CsvOptions
from exportd.sources import Selection
from exportd.sources.filters import validate_filter
from exportd.sources.sql import SqlEngines
from tests.formats.test_fast_paths import columns_of, make_source, run

pytest.importorskip("adbc_driver_sqlite")

LONG = "long text, " * 10_000
FLOATS = [
    0.1 + 0.2, 1e16, 1e15, 1.5e15, 1e-5, 5e-324, 1.7976931348623157e308, -0.0, 0.0, 91.0,
    -4.0, 1e-4, 123456789012345.0, 1234567890123456.5, 1e14, 12345678901234.5, 2.5e-5,
    float("inf"), float("-inf"), -1e-300, 9007199254740993.0, 0.5, 1 / 3,
]  # fmt: skip
TEXTS = [
    "", "a,b", 'say "hi"', "two\nlines", "cr\rhere", "crlf\r\n", "=SUM(A1)", "+1", "-x",
    "@here", "\ttab", "\rcr", "NULL", "café ☕ 𝄞 中文", LONG, "\\.", "semi;colon", "pipe|x",
    "'quoted'", "nul\x00inside", " lead space", "-", "0", "-12",
]  # fmt: skip
INTS = [0, -1, 2**63 - 1, -(2**63), 2**53 + 1, 42, 10**15]
COLS = ["id", "i", "r", "t", "v"]
OPTIONS = [
    {},
    {"delimiter": ";", "null": "NULL", "spreadsheet_safe": False},
    {"quote": "'", "header": False, "bom": True, "line_ending": "crlf"},
    {"delimiter": "-", "quote": "0"},
    {"delimiter": ".", "null": "-1"},
    {"delimiter": "é", "quote": "|", "null": "''"},
]


def make_db(path: Path, extra: list[tuple[Any, ...]] | None = None) -> str:
    """A table of INTEGER, REAL and TEXT columns holding every tricky value, in order."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE tricky (id INTEGER PRIMARY KEY, i BIGINT, r DOUBLE PRECISION,"
        " t VARCHAR(20), v TEXT)"
    )
    n = max(len(FLOATS), len(TEXTS), len(INTS)) * 3
    rows = [
        (k, INTS[k % len(INTS)] if k % 5 else None, FLOATS[k % len(FLOATS)] if k % 7 else None,
         TEXTS[k % len(TEXTS)] if k % 3 else None, TEXTS[(k * 7) % len(TEXTS)])
        for k in range(n)
    ]  # fmt: skip
    conn.executemany("INSERT INTO tricky VALUES (?,?,?,?,?)", rows + (extra or []))
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


@pytest.fixture
def engines() -> Any:
    e = SqlEngines()
    yield e
    e.dispose()


STEPS_ASIDE = "SQLite fast path steps aside"


def both(tmp_path: Path, url: str, engines: SqlEngines, name: str, options: dict[str, Any],
         sel: Selection, bounds: dict[str, Any] | None = None, table: str = "tricky",
         caplog: LogCaptureFixture | None = None, aside: bool = False) -> bytes:  # fmt: skip
    """Both paths' bytes, which must be equal; with `caplog`, whether the fast path stepped
    aside must be `aside`."""
    src = make_source(engines, url, table)
    fmt = get_format(name, options)
    assert isinstance(fast_path(src, fmt, Layout(), columns_of(src, sel.columns)), SqliteArrowCsv)
    bounds = bounds or {"lo": None, "hi": None, "nulls": True}
    slow = run(tmp_path / "slow", src, fmt, sel, bounds, fast=False)
    if caplog is not None:
        caplog.clear()
        caplog.set_level("INFO", "exportd.fastpaths.sqlite_csv")
    fast = run(tmp_path / "fast", src, fmt, sel, bounds, fast=True)
    assert fast == slow
    if caplog is not None:
        assert (STEPS_ASIDE in caplog.text) == aside, caplog.text
    return fast


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("name", ["csv", "tsv"])
def test_byte_identical_on_tricky_values(
    tmp_path: Path,
    engines: SqlEngines,
    options: dict[str, Any],
    name: str,
    caplog: LogCaptureFixture,
) -> None:
    url = make_db(tmp_path / "t.db")
    out = both(tmp_path, url, engines, name, options, Selection(COLS, []), caplog=caplog)
    if not options and name == "csv":
        assert b"0.30000000000000004" in out and b"1e+15" in out and b"Infinity" in out
        assert b"'=SUM(A1)" in out and b'"a,b"' in out and b"\n-12," not in out


@pytest.mark.parametrize("cols", [["t"], ["r"], ["v", "id"], ["i", "r"]])
def test_projections_single_columns_and_partitions(
    tmp_path: Path, engines: SqlEngines, cols: list[str], caplog: LogCaptureFixture
) -> None:
    url = make_db(tmp_path / "t.db")
    for k, bounds in enumerate([
        {"lo": None, "hi": 10, "nulls": False, "kind": "int"},
        {"lo": 10, "hi": 40, "nulls": False, "kind": "int"},
        {"lo": 1000, "hi": None, "nulls": True, "kind": "int"},  # empty
    ]):  # fmt: skip
        both(tmp_path / str(k), url, engines, "csv", {}, Selection(cols, []), bounds, caplog=caplog)


def test_filter(tmp_path: Path, engines: SqlEngines, caplog: LogCaptureFixture) -> None:
    url = make_db(tmp_path / "t.db")
    src = make_source(engines, url, "tricky")
    kinds = {f["name"]: f["kind"] for f in src.dataset.fields}
    flt = validate_filter([{"t": {"like": "%a%"}}, {"r": {"gt": 0.25}}, {"i": {"eq": 42}}], kinds)
    out = both(tmp_path, url, engines, "csv", {}, Selection(COLS, flt), caplog=caplog)
    assert out.count(b"\n") > 5


@pytest.mark.parametrize(
    "extra",
    [
        (1000, "text in an integer column", 1.0, "x", "y"),
        (1000, 2.5, 1.0, "x", "y"),  # a real in an INTEGER column
        (1000, 1, "text in a real column", "x", "y"),
        (1000, 1, 1.0, b"\x00blob,", "y"),  # a blob in a TEXT column
        (1000, b"blob", 1.0, "x", "y"),
        (1000, 1, b"blob", "x", "y"),
        (1000, 1, 1.0, "x", b"\xff\xfe"),
    ],
)
def test_other_types_fall_back_to_the_generic_path(
    tmp_path: Path, engines: SqlEngines, extra: tuple[Any, ...], caplog: LogCaptureFixture
) -> None:
    """SQLite lets a column hold any type: such a partition goes the generic way, with the
    same bytes (a text is neutralised, a number never, whatever the column)."""
    url = make_db(tmp_path / "t.db", [extra, (1001, "-7", -3.5, "=x", "-y")])
    both(tmp_path, url, engines, "csv", {}, Selection(COLS, []), caplog=caplog, aside=True)


def test_other_types_in_the_first_rows(
    tmp_path: Path, engines: SqlEngines, caplog: LogCaptureFixture
) -> None:
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE tricky (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, v TEXT)")
    conn.executemany(
        "INSERT INTO tricky VALUES (?,?,?,?,?)",
        [(1, 2.5, None, None, "a"), (2, None, None, None, "-b"), (3, 4, 1.0, "x", "c")],
    )
    conn.commit()
    conn.close()
    both(tmp_path, f"sqlite:///{path}", engines, "csv", {}, Selection(COLS, []), caplog=caplog,
         aside=True)  # fmt: skip


def test_invalid_utf8_fails_as_the_generic_path_does(tmp_path: Path, engines: SqlEngines) -> None:
    url = make_db(tmp_path / "t.db")
    conn = sqlite3.connect(tmp_path / "t.db")
    conn.execute("INSERT INTO tricky VALUES (2000, 1, 1.0, CAST(x'ff41' AS TEXT), 'v')")
    conn.commit()
    conn.close()
    src = make_source(engines, url, "tricky")
    fmt = get_format("csv", {})
    sel = Selection(COLS, [])
    bounds = {"lo": None, "hi": None, "nulls": True}
    with pytest.raises(Exception) as slow:
        run(tmp_path / "slow", src, fmt, sel, bounds, fast=False)
    with pytest.raises(Exception) as fast:
        run(tmp_path / "fast", src, fmt, sel, bounds, fast=True)
    assert type(fast.value) is type(slow.value)


def test_other_datasets_take_the_generic_path(tmp_path: Path, engines: SqlEngines) -> None:
    url = make_db(tmp_path / "t.db")
    conn = sqlite3.connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE loose (id INTEGER PRIMARY KEY, n NUMERIC, b BLOB, u)")
    conn.execute("INSERT INTO loose VALUES (1, 1.5, x'00ff', 'u'), (2, 3, NULL, 4.25)")
    conn.execute("CREATE VIEW tv AS SELECT * FROM tricky")
    conn.commit()
    conn.close()
    both(
        tmp_path / "a", url, engines, "csv", {}, Selection(["id", "n", "b", "u"], []), table="loose"
    )
    both(tmp_path / "b", url, engines, "csv", {}, Selection(COLS, []), table="tv")
    assert (
        fast_path(make_source(engines, url, "tricky"), get_format("jsonl", {}), Layout(), [])
        is None
    )


def test_affinity_rules() -> None:
    assert [affinity(t) for t in ["INTEGER", "bigint", "VARCHAR(20)", "CLOB", "", "BLOB", "REAL",
            "DOUBLE PRECISION", "FLOAT", "NUMERIC", "DATETIME", "CHARINT"]] == [
        "INTEGER", "INTEGER", "TEXT", "TEXT", "BLOB", "BLOB", "REAL", "REAL", "REAL", "NUMERIC",
        "NUMERIC", "INTEGER"]  # fmt: skip


def test_floats_match_float_text_over_random_doubles() -> None:
    """Arrow's digits and `float_text`'s notation, for random bit patterns and for the
    decimal-looking values data usually holds."""
    rnd = random.Random(20240501)
    values = [
        struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(200_000)
    ]
    values += [round(rnd.uniform(-1e6, 1e6), rnd.randint(0, 6)) for _ in range(200_000)]
    values += [rnd.randint(-(10**17), 10**17) / 10 ** rnd.randint(0, 20) for _ in range(200_000)]
    values += [10.0**e for e in range(-330, 309)] + [-(10.0**e) for e in range(-20, 20)]
    values = [v for v in values if v == v]  # SQLite stores NaN as NULL
    got = ArrowCsv(CsvOptions(), 1)._floats(pa.array(values, pa.float64())).to_pylist()
    want = [float_text(v) for v in values]
    bad = [(v, g, w) for v, g, w in zip(values, got, want, strict=True) if g != w]
    assert bad == []


def test_estimate_of_a_rowid_key_is_its_range_flagged(tmp_path: Path) -> None:
    """An INTEGER PRIMARY KEY estimates the rows by its range (flagged, no count(*));
    any other key, or a filter, counts them exactly."""
    db = tmp_path / "est.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("CREATE TABLE u (id INT PRIMARY KEY, v TEXT)")  # INT: not the rowid
        for table in ("t", "u"):
            conn.executemany(f"INSERT INTO {table} VALUES (?, 'x')", [(i,) for i in range(5, 1005, 2)])  # fmt: skip
    engines = SqlEngines()
    t, u = (make_source(engines, f"sqlite:///{db}", name) for name in ("t", "u"))
    everything = Selection(["id", "v"], [])
    some = Selection(["id", "v"], validate_filter([{"id": {"lt": 100}}], t.kinds))
    assert (t.estimate(everything).count, t.estimate(everything).is_estimate) == (999, True)
    assert (t.estimate(some).count, t.estimate(some).is_estimate) == (48, False)
    assert (u.estimate(everything).count, u.estimate(everything).is_estimate) == (500, False)
