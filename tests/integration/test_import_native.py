"""The C check of an import's chunks (`_importcsv`, execution/imports/native.py) against the
Python checker and a real PostgreSQL: for awkward texts of every kind, a value the C
check accepts is one the Python checker accepts too, and the C check's COPY text, COPYed
into a column of the real type, stores exactly what the Python checker's value stores
(compared in PostgreSQL with IS NOT DISTINCT FROM); values that Python or PostgreSQL
would read otherwise are left to Python ("doubtful"). And the chunk: CRLF lines, a last
line without LF, bad UTF-8 and a line of another width (refused), line numbers, keys,
constants and the staging tables' line column."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from exportd.execution.imports.native import NativeChecker
from exportd.formats.readers import _one_record_per_line
from exportd.sources.targets import Target, ValueRules

pytest.importorskip("exportd.fastpaths._importcsv")

INTS = ["0", "-0", "+5", "007", "32767", "32768", "-32768", "-32769", "2147483647",
        "2147483648", "-2147483648", "9223372036854775807", "9223372036854775808",
        "-9223372036854775808", "-9223372036854775809", "00000000000000000000001",
        "99999999999999999999999", "1_000", " 7", "7 ", "", "1.0", "1e3", "\u0663", "-", "+",
        "--1", "0x10", "NA"]  # fmt: skip
FLOATS = ["0", "-0", "1.5", ".5", "5.", "1e5", "1E-5", "1e+99", "1e100", "1e-400", "inf",
          "nan", "NaN", "1,5", "+1.5", "123456789012345678901", "0.1", "1e", "e5", ".", "-.5",
          "1.2.3", "12345678901234567890.12345678901234567890", "3.4028236e38", "3.4e38",
          "1e-39", "1.17549435e-38", "16777217", "3.3e38", "0.30000000000000004", "", "NA"]  # fmt: skip
DECIMALS = ["12.34", "-0.5", "9999.99", "1.005", "10000", "12345.6", "+1.5", "0.125",
            "0000012.30", "5.", ".5", ".", "", "-", "1e3", "NaN", "1.500", "0.0001", "+.5",
            "1.2.3", "123456789012345678901234567890.123456789", "NA"]  # fmt: skip
BOOLS = ["true", "f", "1", "0", "Yes", "TRUE", " t", "on", "N", "2", "yes", "no", "FALSE",
         "y", "", "NA", "tru"]  # fmt: skip
DATES = ["2013-01-01", "2024-02-29", "2023-02-29", "2013-02-30", "2013-1-5", "20130105",
         "0000-01-01", "0999-12-31", "1000-01-01", "9999-12-31", "2013-13-01", "2013-00-10",
         "2013-01-00", "2013-01-32", " 2013-01-01", "2013-01-01T00:00:00", "", "NA"]  # fmt: skip
TIMESTAMPS = ["2013-01-01T10:00:00", "2013-06-01 23:59:59.5", "2013-01-01T10:00",
              "2013-01-01T10:00:00Z", "2013-01-01T10:00:00.1234567", "2013-01-01T24:00:00",
              "2013-02-29T10:00:00", "2013-01-01T10:00:00+05:30", "2013-01-01T00:10:00+01:00",
              "1000-01-01T00:00:00+00:01", "9999-12-31T23:00:00-05:00", "2013-01-01T10:00:00-00:00",
              "2013-01-01T10:00:00+0530", "2013-01-01T10:00:00.000001Z", "2013-01-01T10:00:60",
              "2013-01-01 10:00:00.123456+14:00", "2013-12-31T23:30:00-01:00", "2013-01-01",
              "", "NA"]  # fmt: skip
TEXTS = ["abc", "abcd", "", "\u00e9\u20ac\U0001d11e", "\u00e9\u20ac\U0001d11ex", 'a"b', "a,b",
         "back\\slash", "\\.", "NA", " x "]  # fmt: skip

# table column type, kind, candidates, texts the C check must take, texts it must leave
CASES: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "smallint": ("smallint", INTS, ["0", "-0", "+5", "007", "32767", "-32768", "NA"],
                 ["32768", "-32769", "1.0", "", " 7"]),
    "integer": ("integer", INTS, ["2147483647", "-2147483648", "00000000000000000000001"],
                ["2147483648", "\u0663"]),
    "bigint": ("bigint", INTS, ["9223372036854775807", "-9223372036854775808"],
               ["9223372036854775808", "-9223372036854775809", "99999999999999999999999"]),
    "double": ("double precision", FLOATS, ["0", "-0", "1.5", ".5", "5.", "1E-5", "1e+99", "+1.5"],
               ["1e100", "1e-400", "inf", "nan", "1,5", "123456789012345678901", "."]),
    "real": ("real", FLOATS, ["0.1", "16777217", "3.3e38", "1.5"], ["3.4028236e38", "3.4e38", "1e-39"]),
    "numeric62": ("numeric(6,2)", DECIMALS, ["12.34", "-0.5", "9999.99", "0000012.30", "5.", ".5"],
                  ["1.005", "10000", "12345.6", ".", "1e3", "NaN"]),
    "numeric": ("numeric", DECIMALS, ["1.500", "0.0001", "+.5", "123456789012345678901234567890.123456789"],
                ["1e3", "NaN", "1.2.3", "."]),
    "boolean": ("boolean", BOOLS, ["true", "f", "1", "0", "Yes", "TRUE", "N", "FALSE", "y"],
                [" t", "on", "2", "", "tru"]),
    "date": ("date", DATES, ["2013-01-01", "2024-02-29", "1000-01-01", "9999-12-31"],
             ["2023-02-29", "2013-02-30", "2013-1-5", "0999-12-31", "2013-13-01", " 2013-01-01"]),
    "timestamp": ("timestamp", TIMESTAMPS,
                  ["2013-01-01T10:00:00", "2013-01-01T10:00:00Z", "2013-01-01T00:10:00+01:00",
                   "1000-01-01T00:00:00+00:01", "2013-12-31T23:30:00-01:00"],
                  ["2013-01-01T10:00", "2013-01-01T10:00:00.1234567", "2013-01-01T24:00:00",
                   "2013-01-01T10:00:00+0530", "9999-12-31T23:00:00-05:00", "2013-01-01"]),
    "timestamptz": ("timestamptz", TIMESTAMPS,
                    ["2013-01-01T10:00:00", "2013-06-01 23:59:59.5", "2013-01-01T10:00:00+05:30",
                     "2013-01-01 10:00:00.123456+14:00", "9999-12-31T23:00:00-05:00"],
                    ["2013-02-29T10:00:00", "2013-01-01T10:00:60"]),
    "varchar3": ("varchar(3)", TEXTS, ["abc", "", "\u00e9\u20ac\U0001d11e", 'a"b', "a,b", "\\."],
                 ["abcd", "\u00e9\u20ac\U0001d11ex"]),
    "text": ("text", TEXTS, [*TEXTS[:-2], " x "], []),
}  # fmt: skip
RULES = ValueRules(null_values=frozenset({"NA"}), date_format=None, datetime_format=None,
                   timezone="UTC", decimal_separator=".")  # fmt: skip


@pytest.fixture
def pg(pg_database: str) -> Iterator[tuple[psycopg.Connection[Any], sa.Engine]]:
    engine = sa.create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://", 1))
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        yield conn, engine
    engine.dispose()


def _check(target: Target, column: str, chunk: bytes, **kw: Any) -> Any:
    loaded = kw.pop("loaded", [(column, 0)])
    native = NativeChecker.of(
        target, loaded, kw.pop("constants", {}), kw.pop("rules", RULES), kw.pop("key", []),
        kw.pop("sep", "\t"), kw.pop("width", 1), kw.pop("with_line", False),
    )  # fmt: skip
    assert native is not None
    return native(chunk, kw.pop("first_line", 1))


@pytest.mark.parametrize("case", sorted(CASES))
def test_what_the_c_check_takes_postgresql_stores_as_python_would(
    pg: tuple[psycopg.Connection[Any], sa.Engine], case: str
) -> None:
    conn, engine = pg
    pg_type, candidates, must_take, must_leave = CASES[case]
    conn.execute(f"CREATE TABLE c (i int, v {pg_type})")
    conn.execute(f"CREATE TABLE p (i int, v {pg_type})")
    target = Target.reflect(engine, "c")
    col = target.column("v")
    assert col is not None
    taken, left = set(), set()
    for i, text in enumerate(candidates):
        got = _check(target, "v", f"{i}\t{text}\n".encode(), loaded=[("i", 0), ("v", 1)], width=2)
        if got.rows == 0:
            assert got.doubtful == [(0, 0, len(f"{i}\t{text}".encode()))]
            left.add(text)
            continue
        taken.add(text)
        value = col.convert(text, RULES)  # the C check takes only what Python takes
        with conn.cursor().copy("COPY c (i, v) FROM STDIN (FORMAT csv)") as cp:
            cp.write(got.data)
        with conn.cursor().copy("COPY p (i, v) FROM STDIN") as cp:
            cp.write_row((i, struct.unpack("<f", struct.pack("<f", value))[0]
                          if col.single and value is not None else value))  # fmt: skip
    assert set(must_take) <= taken, sorted(set(must_take) - taken)
    assert not set(must_leave) & taken, sorted(set(must_leave) & taken)
    differ = conn.execute(
        "SELECT c.i, c.v::text, p.v::text FROM c FULL JOIN p USING (i) "
        "WHERE c.v IS DISTINCT FROM p.v OR c.i IS NULL OR p.i IS NULL"
    ).fetchall()
    assert differ == [], [(candidates[r[0]], r[1], r[2]) for r in differ]
    stored = conn.execute("SELECT count(*) FROM c").fetchone()
    assert stored is not None and stored[0] == len(taken) > 0


def test_the_chunk_lines_keys_constants_and_refusals(
    pg: tuple[psycopg.Connection[Any], sa.Engine],
) -> None:
    conn, engine = pg
    conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, code text, n int, origin text)")
    target = Target.reflect(engine, "t")
    loaded = [("id", 0), ("code", 1), ("n", 2)]
    kw: dict[str, Any] = dict(loaded=loaded, sep=",", width=3, key=["id", "code"],
                              constants={"origin": 'the "file"'}, first_line=7)  # fmt: skip
    chunk = b"1,a,10\r\n2,b,x\r\n3,,30\n4,d\xc3\xa9,NA"
    got = _check(target, "id", chunk, **kw)
    assert got.rows == 3 and got.lines.to_pylist() == [7, 9, 10]
    assert [k.to_pylist() for k in got.keys] == [[1, 3, 4], ["a", "", "d\u00e9"]]
    assert (
        got.data == b'1,a,10,"the ""file"""\n3,"",30,"the ""file"""\n4,d\xc3\xa9,,"the ""file"""\n'
    )
    assert [(i, chunk[s:e]) for i, s, e in got.doubtful] == [(1, b"2,b,x")]
    # the staging tables' COPY: the line number last
    staged = _check(target, "id", b"5,e,50\n", **{**kw, "key": [], "with_line": True})
    assert staged.data == b'5,e,50,"the ""file""",7\n'
    # refused, for the Arrow way: bad UTF-8, a line of another width
    assert _check(target, "id", b"1,a,10\n2,\xff,3\n", **kw) is None
    assert _check(target, "id", b"1,a,10\n2,b\n", **kw) is None
    assert _check(target, "id", b"1,a,10,11\n", **kw) is None
    # a NULL key is left to Python (its key file takes None)
    nulls = ValueRules(null_values=frozenset({"", "NA"}), date_format=None,
                       datetime_format=None, timezone="UTC", decimal_separator=".")  # fmt: skip
    got = _check(target, "id", b"NA,a,1\n6,,2\n", **{**kw, "rules": nulls})
    assert got.rows == 0 and [i for i, _, _ in got.doubtful] == [0, 1]


def test_the_c_check_is_not_offered_what_it_cannot_take(
    pg: tuple[psycopg.Connection[Any], sa.Engine],
) -> None:
    conn, engine = pg
    conn.execute("CREATE TABLE t (id bigint NOT NULL, at timestamptz, j jsonb, r real)")
    target = Target.reflect(engine, "t")

    def of(loaded: list[tuple[str, int]], **rules: Any) -> NativeChecker | None:
        r = ValueRules(**{**RULES.__dict__, **rules})
        return NativeChecker.of(target, loaded, {}, r, [], ",", 3, False)

    assert of([("id", 0), ("at", 1), ("r", 2)]) is not None
    assert of([("id", 0), ("at", 1)], timezone="Europe/Paris") is None  # zone rules: pyarrow
    assert of([("id", 0)], timezone="Europe/Paris") is not None  # no timestamp column
    assert of([("at", 1)], datetime_format="%d.%m.%Y %H:%M:%S") is None
    assert of([("j", 0)]) is None  # a kind it does not check
    assert of([("id", -1)]) is None  # NOT NULL without a field
    assert of([("at", -1), ("id", 0)]) is not None  # a nullable column without a field
    assert of([("r", 0)], decimal_separator=",") is not None
    assert of([("r", 0)], decimal_separator="\u066b") is None  # not one ASCII byte


def test_the_c_scan_says_what_the_readers_bytes_methods_say() -> None:
    """`_importcsv.scan` (LF count; no quote and one record per line) against the Python
    test it replaces, on every short chunk of LF, CR, a quote and text, and random ones."""
    from exportd.fastpaths._importcsv import scan

    rnd = random.Random(7)
    alphabet = [b"a", b"\n", b"\r", b'"', b","]
    chunks = [
        b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12))) for _ in range(20000)
    ]
    chunks += [b"", b"\n", b"\r\n", b"a\n\r\nb", b"a\r\r\n", b"a\r", b"x" * 100 + b"\n\n"]
    for chunk in chunks:
        for quote in (b'"', b""):
            want = (
                chunk.count(b"\n"),
                (not quote or quote not in chunk) and _one_record_per_line(chunk),
            )
            assert scan(chunk, quote) == want, (chunk, quote)
