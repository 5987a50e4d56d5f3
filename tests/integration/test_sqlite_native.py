"""The native SQLite -> CSV reader (`exportd.fastpaths._sqlitecsv`, C) writes the bytes of
the generic path (fast paths off), cell for cell: every storage class's edge values, every
CSV/TSV dialect, zero rows, many chunks; a cell it cannot render (a blob in a TEXT column,
a text or a real in an INTEGER column, a text in a REAL column, text that is not UTF-8)
sends the partition to the generic path from its start; its reals are `float_text`'s over
random doubles; and an export through the real service equals the fast-paths-off export
while the reader counts itself (`exportd_sqlite_csv_partitions_total`) as having run."""

from __future__ import annotations

import random
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from exportd.errors import Canceled
from exportd.execution.heartbeat import Heartbeat
from exportd.fastpaths import fast_path
from exportd.fastpaths.sqlite_csv import SqliteArrowCsv
from exportd.formats import get_format
from exportd.formats.cells import float_text
from exportd.formats.splitting import Layout, PartOutput
from exportd.formats.text import CsvOptions
from exportd.metrics import PROCESS
from exportd.model import TaskStatus
from exportd.sources import Selection
from exportd.sources.filters import validate_filter
from exportd.sources.sql import SqlEngines, SqlSource
from exportd.storage.local import LocalStorage
from tests.formats.test_fast_paths import columns_of, make_source, run_through

native = pytest.importorskip("exportd.fastpaths._sqlitecsv")
if not hasattr(native, "Reader"):
    pytest.skip("the C reader was not built", allow_module_level=True)

LONG = "long text, " * 30_000  # 330 kB: a partition of them spans many 1 MB chunks
FLOATS = [
    0.1, 1e16, 1e-7, -0.0, 0.0, float("nan"), float("inf"), float("-inf"), 5e-324,
    1.7976931348623157e308, -1.7976931348623157e308, 2.2250738585072014e-308, 1e15, 1.5e15,
    0.1 + 0.2, 91.0, -4.0, 1e-4, 9.999e-5, 123456789012345.0, 1234567890123456.7, 2.0**53,
    2.0**-1022 * 3, 1e22, 1e23, 1 / 3, -2.5e-5, 12.25, 1e100, 2.0**-1074 * 7,
]  # fmt: skip
TEXTS = [
    "", "a,b", 'say "hi"', "two\nlines", "cr\rhere", "crlf\r\n", "=SUM(A1)", "+1", "-x", "@h",
    "\ttab", "\rcr", "NULL", "café ☕ 𝄞 中文", "\\.", "semi;colon", "tab\there", "'q'", "nul\x00in",
    " lead", "-", "0", "-12", "-1", "''", "N", "é", "e|x", "||", "1e+16",
]  # fmt: skip
INTS = [0, -1, 1, 2**63 - 1, -(2**63), 2**53 + 1, 42, 10**15, -7]
COLS = ["id", "i", "r", "t", "v"]
OPTIONS = [
    {},
    {"spreadsheet_safe": False},
    {"delimiter": ";", "null": "NULL", "spreadsheet_safe": False, "line_ending": "crlf"},
    {"quote": "'", "header": False, "bom": True, "line_ending": "crlf"},
    {"delimiter": "-", "quote": "0"},
    {"delimiter": ".", "null": "-1"},
    {"delimiter": "é", "quote": "|", "null": "''"},
    {"null": "\\N"},
    {"null": "0", "delimiter": "e"},
    {"delimiter": "1", "quote": "N"},
]


def make_db(path: Path, extra: list[tuple[Any, ...]] | None = None, n: int = 0) -> str:
    """INTEGER, REAL and TEXT columns holding every edge value, NULLs in between."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE edge (id INTEGER PRIMARY KEY, i BIGINT, r DOUBLE PRECISION,"
        " t VARCHAR(20), v TEXT)"
    )
    n = n or max(len(FLOATS), len(TEXTS), len(INTS)) * 3
    rows = [
        (k, INTS[k % len(INTS)] if k % 5 else None, FLOATS[k % len(FLOATS)] if k % 7 else None,
         TEXTS[k % len(TEXTS)] if k % 4 else None, TEXTS[(k * 7) % len(TEXTS)])
        for k in range(n)
    ]  # fmt: skip
    conn.executemany("INSERT INTO edge VALUES (?,?,?,?,?)", rows + (extra or []))
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def partitions(reader: str) -> float:
    labels = {"process": PROCESS, "reader": reader}
    got = REGISTRY.get_sample_value("exportd_sqlite_csv_partitions_total", labels)
    return got or 0.0


def run(tmp: Path, src: SqlSource, fmt: Any, sel: Selection, bounds: dict[str, Any],
        path: SqliteArrowCsv | None) -> bytes:  # fmt: skip
    """One partition through `path` (None: the generic path); the assembled file."""
    return run_through(tmp, src, fmt, sel, bounds, path)


EVERYTHING = {"lo": None, "hi": None, "nulls": True}


def compare(tmp: Path, url: str, name: str, options: dict[str, Any], sel: Selection,
            bounds: dict[str, Any] = EVERYTHING, reader: str = "native") -> bytes:  # fmt: skip
    """The native (or ADBC) path's bytes equal the generic path's; `reader` is the counter
    that must have moved by one (generic: the fast path stepped aside)."""
    engines = SqlEngines()
    try:
        src = make_source(engines, url, "edge")
        fmt = get_format(name, options)
        path = fast_path(src, fmt, Layout(), columns_of(src, sel.columns))
        assert isinstance(path, SqliteArrowCsv) and path.native
        if reader == "adbc":
            path = SqliteArrowCsv(src, fmt.options, columns_of(src, sel.columns), native=False)  # type: ignore[attr-defined]
        slow = run(tmp / "slow", src, fmt, sel, bounds, None)
        before = {k: partitions(k) for k in ("native", "adbc", "generic")}
        fast = run(tmp / "fast", src, fmt, sel, bounds, path)
        moved = {k: partitions(k) - before[k] for k in before}
        assert moved == {k: float(k == reader) for k in before}
        assert fast == slow
        return fast
    finally:
        engines.dispose()


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("name", ["csv", "tsv"])
def test_every_dialect_byte_identical(tmp_path: Path, name: str, options: dict[str, Any]) -> None:
    url = make_db(tmp_path / "e.db")
    out = compare(tmp_path, url, name, options, Selection(COLS, []))
    if name == "csv":  # the ADBC reader (no C extension) still writes the same bytes
        pytest.importorskip("adbc_driver_sqlite")
        assert (
            compare(tmp_path / "adbc", url, name, options, Selection(COLS, []), reader="adbc")
            == out
        )
    if not options and name == "csv":
        for text in (b"0.1", b"1e+16", b"1e-07", b"-0", b"5e-324", b"1.7976931348623157e+308",
                     b"Infinity", b"-Infinity", b"1e+15", b"9223372036854775807",
                     b"-9223372036854775808", b"'=SUM(A1)", b'"a,b"', b'"say ""hi"""',
                     b'"two\nlines"', "café ☕ 𝄞 中文".encode(), b'""', b"nul\x00in"):  # fmt: skip
            assert text in out, text
        assert b",-12," not in out and b",'-12," in out  # text neutralised, numbers never


@pytest.mark.parametrize("cols", [["t"], ["r"], ["v", "id"], ["i", "r"], ["v"]])
def test_projections_and_partitions(tmp_path: Path, cols: list[str]) -> None:
    url = make_db(tmp_path / "e.db")
    for k, bounds in enumerate([
        {"lo": None, "hi": 10, "nulls": False, "kind": "int"},
        {"lo": 10, "hi": 40, "nulls": False, "kind": "int"},
        {"lo": 1000, "hi": None, "nulls": True, "kind": "int"},  # zero rows
    ]):  # fmt: skip
        compare(tmp_path / str(k), url, "csv", {}, Selection(cols, []), bounds)


def test_zero_rows_and_the_adbc_reader_still_equal(tmp_path: Path) -> None:
    url = make_db(tmp_path / "e.db")
    empty = {"lo": 5000, "hi": None, "nulls": False, "kind": "int"}
    out = compare(tmp_path / "z", url, "csv", {}, Selection(COLS, []), empty)
    assert out == b"id,i,r,t,v\n"
    pytest.importorskip("adbc_driver_sqlite")
    compare(tmp_path / "a", url, "csv", {"null": "NULL"}, Selection(COLS, []), reader="adbc")


def test_many_chunks(tmp_path: Path) -> None:
    """Rows of 330 kB text: the reader returns whole rows in about 1 MB chunks."""
    url = make_db(
        tmp_path / "e.db", [(10_000 + k, k, k / 7, LONG, LONG[: k + 1]) for k in range(12)]
    )
    out = compare(tmp_path, url, "csv", {}, Selection(COLS, []))
    assert out.count(LONG.encode()) == 12
    reader = native.Reader(str(tmp_path / "e.db"), "SELECT t FROM edge WHERE id >= ? ORDER BY id",
                           (10_000,), "t", ",", '"', "", "\n", True)  # fmt: skip
    chunks = []
    while data := reader.read(1 << 20, 0.5):
        chunks.append(data)
    assert [c.count(b"\n") for c in chunks] == [4, 4, 4] and reader.rows == 12
    assert b"".join(chunks) == (f'"{LONG}"\n'.encode()) * 12
    assert reader.read(1 << 20, 0.5) == b""  # and again at the end
    one = native.Reader(str(tmp_path / "e.db"), "SELECT id FROM edge ORDER BY id", (), "i",
                        ",", '"', "", "\n", True)  # fmt: skip
    assert one.read(1, 10.0) == b"0\n" and one.read(3, 10.0) == b"1\n2\n" and one.rows == 3
    one.close()


@pytest.mark.parametrize(
    "extra",
    [
        (1000, "text in an integer column", 1.0, "x", "y"),
        (1000, 2.5, 1.0, "x", "y"),  # a real in an INTEGER column
        (1000, 1, "text in a real column", "x", "y"),
        (1000, 1, 1.0, b"\x00blob,", "y"),  # a blob in a TEXT column
        (1000, b"blob", 1.0, "x", "y"),
        (1000, 1, b"blob", "x", "y"),
    ],
)
def test_other_storage_classes_fall_back(tmp_path: Path, extra: tuple[Any, ...]) -> None:
    """The partition runs the generic path from its start: the same bytes again."""
    url = make_db(tmp_path / "e.db", [extra, (1001, "-7", -3.5, "=x", "-y")])
    compare(tmp_path, url, "csv", {}, Selection(COLS, []), reader="generic")


def test_a_fallback_after_chunks_were_written_discards_them(tmp_path: Path) -> None:
    """The native reader writes its chunks straight into the part: a bad cell near the
    end (after several MB) discards them, and the generic path's part is all there is."""
    n = 60_000
    url = make_db(tmp_path / "e.db", [(n + 1, 1, 1.0, b"blob", "y")], n=n)
    out = compare(tmp_path, url, "csv", {}, Selection(COLS, []), reader="generic")
    assert out.count(b"\n59999,") == 1 and out.count(b"\n1,") == 1  # rows once, no rest
    assert sorted(p.name for p in (tmp_path / "fast" / "parts" / "x").iterdir()) == [
        "index.json",
        "s00000.csv",
    ]


def test_invalid_utf8_falls_back_and_fails_as_the_generic_path(tmp_path: Path) -> None:
    url = make_db(tmp_path / "e.db")
    with sqlite3.connect(tmp_path / "e.db") as conn:
        conn.execute("INSERT INTO edge VALUES (2000, 1, 1.0, CAST(x'ff41' AS TEXT), 'v')")
    reader = native.Reader(str(tmp_path / "e.db"), "SELECT t FROM edge WHERE id = 2000", (),
                           "t", ",", '"', "", "\n", True)  # fmt: skip
    with pytest.raises(native.Unrenderable, match="not UTF-8"):
        reader.read(1 << 20, 0.5)
    engines = SqlEngines()
    try:
        src = make_source(engines, url, "edge")
        fmt = get_format("csv", {})
        path = fast_path(src, fmt, Layout(), columns_of(src, COLS))
        assert isinstance(path, SqliteArrowCsv) and path.native
        sel = Selection(COLS, [])
        with pytest.raises(Exception) as slow:
            run(tmp_path / "slow", src, fmt, sel, EVERYTHING, None)
        before = partitions("generic")
        with pytest.raises(Exception) as fast:
            run(tmp_path / "fast", src, fmt, sel, EVERYTHING, path)
        assert type(fast.value) is type(slow.value) and partitions("generic") == before + 1
    finally:
        engines.dispose()


@pytest.mark.parametrize(
    "text", [b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe0\x80\xaf", b"a\xff"]
)
def test_strict_utf8(tmp_path: Path, text: bytes) -> None:
    """Overlong forms, surrogates, beyond U+10FFFF, truncated: as Python's decoder refuses."""
    with pytest.raises(UnicodeDecodeError):
        text.decode()
    db = tmp_path / "u.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE u (t TEXT)")
        conn.execute("INSERT INTO u VALUES (CAST(? AS TEXT))", (text,))
        conn.execute("INSERT INTO u VALUES (?)", ("ok 𝄞\U0010ffff\ud7ff",))
    bad = native.Reader(str(db), "SELECT t FROM u WHERE rowid = 1", (), "t", ",", '"', "",
                        "\n", True)  # fmt: skip
    with pytest.raises(native.Unrenderable):
        bad.read(100, 1.0)
    good = native.Reader(str(db), "SELECT t FROM u WHERE rowid = 2", (), "t", ",", '"', "",
                         "\n", True)  # fmt: skip
    assert good.read(100, 1.0) == "ok 𝄞\U0010ffff\ud7ff\n".encode()


def test_reals_match_float_text_over_random_doubles() -> None:
    rnd = random.Random(20261201)
    values = [
        struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(200_000)
    ]
    values += [round(rnd.uniform(-1e6, 1e6), rnd.randint(0, 9)) for _ in range(200_000)]
    values += [rnd.randint(-(10**17), 10**17) / 10 ** rnd.randint(0, 25) for _ in range(200_000)]
    values += [10.0**e for e in range(-330, 309)] + [-(10.0**e) for e in range(-20, 20)]
    values += [2.0**e for e in range(-1074, 1024)] + [3 * 2.0**e for e in range(-1074, 1022)]
    values += FLOATS
    bad = [(v, native.float_text(v), float_text(v)) for v in values
           if native.float_text(v) != float_text(v)]  # fmt: skip
    assert bad == []


def test_missing_file_and_bad_query(tmp_path: Path) -> None:
    with pytest.raises(native.Error):
        native.Reader(str(tmp_path / "none.db"), "SELECT 1", (), "i", ",", '"', "", "\n", True)
    assert not (tmp_path / "none.db").exists()  # read-only: never created
    url = make_db(tmp_path / "e.db")
    with pytest.raises(native.Error):
        native.Reader(url[10:], "SELECT nope FROM edge", (), "i", ",", '"', "", "\n", True)
    with pytest.raises(ValueError):
        native.Reader(url[10:], "SELECT id FROM edge", (), "ii", ",", '"', "", "\n", True)
    with pytest.raises(native.Error):  # read-only
        r = native.Reader(url[10:], "DELETE FROM edge RETURNING id", (), "i", ",", '"', "", "\n", True)  # fmt: skip
        r.read(10, 1.0)
    assert sqlite3.connect(tmp_path / "e.db").execute("SELECT count(*) FROM edge").fetchone()[0]


def test_csv_options_of_the_reader_match_the_encoder() -> None:
    """The options the fast path passes are CsvOptions' own fields."""
    o = CsvOptions()
    assert (o.delimiter, o.quote, o.null, o.line_ending, o.spreadsheet_safe) == (
        ",", '"', "", "\n", True)  # fmt: skip


def test_export_through_the_service_equals_fast_paths_off(tmp_path: Path, live_server: Any) -> None:
    """The real service, 4 partitions: the file equals the fast-paths-off service's, and
    every partition was written by the native reader."""
    url = make_db(tmp_path / "e.db", n=20_000)
    files = []
    for fast in (True, False):
        server = live_server(workers=2, fast_paths=fast)
        api = server.client()
        api.project("p")
        api.dataset("p", name="edge", url=url, table="edge", key="id")
        before = partitions("native")
        task = api.export("p", dataset_id="edge", format="csv", parallelism=4)
        done = api.wait("p", task["task_id"])
        assert done["status"] == "COMPLETED", done
        assert partitions("native") - before == (4 if fast else 0)
        files.append(api.http.get(f"/v1/projects/p/exports/{task['task_id']}/download").content)
    assert files[0] == files[1]
    assert files[0].startswith(b"id,i,r,t,v\n0,,,,") and b"\n19999,-1,, lead," in files[0]


def test_filters_are_bound_parameters(tmp_path: Path) -> None:
    """The partition's bounds and filter values are bound (qmark), not rendered into the
    SQL text; the rows are the generic path's."""
    url = make_db(tmp_path / "e.db")
    engines = SqlEngines()
    try:
        src = make_source(engines, url, "edge")
        kinds = {f["name"]: f["kind"] for f in src.dataset.fields}
        flt = validate_filter(
            [{"t": {"in": ["a,b", "'q'", "say \"hi\""]}}, {"r": {"gt": 0.25}}, {"i": {"eq": 42}},
             {"v": {"like": "%é%"}}],
            kinds,
        )  # fmt: skip
        sel = Selection(COLS, flt)
        bounds = {"lo": 3, "hi": 80, "nulls": False, "kind": "int"}
        path = fast_path(src, get_format("csv", {}), Layout(), columns_of(src, COLS))
        assert isinstance(path, SqliteArrowCsv)
        sql, params = path.bound_query(sel, bounds)
        assert params[:2] == (3, 80) and "'q'" in params and 0.25 in params
        assert "'q'" not in sql and "0.25" not in sql
    finally:
        engines.dispose()
    out = compare(tmp_path, url, "csv", {}, sel, bounds)
    assert out.count(b"\n") > 10 and b"'q'" in out


def test_a_cancel_is_seen_between_chunks(tmp_path: Path) -> None:
    """The heartbeat is checked after each chunk: a canceled task stops the partition
    after its first chunk (its rows are the progress), never runs the generic path."""
    url = make_db(tmp_path / "e.db", [(10_000 + k, k, 0.5, LONG, "x") for k in range(12)])
    engines = SqlEngines()
    try:
        src = make_source(engines, url, "edge")
        fmt = get_format("csv", {})
        path = fast_path(src, fmt, Layout(), columns_of(src, COLS))
        assert isinstance(path, SqliteArrowCsv) and path.native
        before = {k: partitions(k) for k in ("native", "generic")}
        with (
            pytest.raises(Canceled),
            Heartbeat(lambda r, b: TaskStatus.CANCELING, 30, TaskStatus.RUNNING) as hb,
            PartOutput(LocalStorage(tmp_path / "out"), "parts/x/", fmt, columns_of(src, COLS), Layout()) as out,
        ):  # fmt: skip
            hb.beat_now()
            path.export(Selection(COLS, []), {"lo": 0, "hi": None, "nulls": True}, out, hb)
        total = sum(len(b) for b in src.read(Selection(["id"], []), EVERYTHING, 1000))
        assert 0 < hb.rows < total and hb.bytes >= 1 << 20
        assert {k: partitions(k) for k in before} == before
    finally:
        engines.dispose()


def test_a_reader_that_stopped_returns_nothing_more(tmp_path: Path) -> None:
    """After Unrenderable the reader is closed: no row after the bad one is ever read."""
    make_db(tmp_path / "e.db", [(1000, "text", 1.0, "x", "y"), (1001, 5, 1.0, "x", "y")])
    reader = native.Reader(str(tmp_path / "e.db"), "SELECT i FROM edge WHERE id >= 1000", (),
                           "i", ",", '"', "", "\n", True)  # fmt: skip
    with pytest.raises(native.Unrenderable, match="column 0 holds a text"):
        reader.read(1 << 20, 0.5)
    assert reader.read(1 << 20, 0.5) == b"" and reader.rows == 0
