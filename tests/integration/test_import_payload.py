"""The staged rows of an import as PostgreSQL's CSV COPY reads them (`csv_payload`): the C
writer (`_arrowcsv`) and Arrow's writer, each COPYed into a real PostgreSQL table of the
columns' types and read back, give every value as it was: NULL against the empty text,
text with commas, quotes, newlines, backslashes and `\\.`, integers at their limits,
reals that need all 17 digits, -0.0, subnormals and infinities, dates at years 1 and 9999,
and arrays sliced at offsets that are not a multiple of 8 (their null bits too)."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from datetime import date
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from exportd.execution.imports import columnar
from exportd.fastpaths import _arrowcsv

TEXTS = ["", None, "plain", 'say "hi"', "a,b", "two\nlines", "cr\r", "back\\slash", "\\.",
         " padded ", "ünïcödé ✓", "NULL", "\\N"]  # fmt: skip
REALS = [0.0, -0.0, 0.1, -2.5, 1e300, 5e-324, 2.2250738585072014e-308, 1 / 3, 1e15, 1e16,
         123456789.125, math.inf, -math.inf, None, 2.0**53, 0.30000000000000004]  # fmt: skip
INTS = [0, -1, 2**63 - 1, -(2**63), None, 42, 10**18, -(10**17)]
DATES = [date(1, 1, 1), date(9999, 12, 31), date(1970, 1, 1), date(2024, 2, 29), None,
         date(1969, 12, 31), date(2000, 3, 1)]  # fmt: skip


def _column(values: list[Any], n: int) -> list[Any]:
    return [values[i % len(values)] for i in range(n)]


def _table(n: int) -> pa.Table:
    return pa.table(
        {
            "t": pa.array(_column(TEXTS, n), pa.string()),
            "lt": pa.array(_column(TEXTS[::-1], n), pa.large_string()),
            "d": pa.array(_column(REALS, n), pa.float64()),
            "f": pa.array(_column([0.5, None, -3.25, 1e30], n), pa.float32()),
            "l": pa.array(_column(INTS, n), pa.int64()),
            "i": pa.array(_column([2**31 - 1, -(2**31), None, 7], n), pa.int32()),
            "s": pa.array(_column([-(2**15), 2**15 - 1, None], n), pa.int16()),
            "b8": pa.array(_column([-128, 127, None, 0], n), pa.int8()),
            "ok": pa.array(_column([True, False, None], n), pa.bool_()),
            "day": pa.array(_column(DATES, n), pa.date32()),
        }
    )


PG_TYPES = {"t": "text", "lt": "text", "d": "double precision", "f": "real", "l": "bigint",
            "i": "integer", "s": "smallint", "b8": "smallint", "ok": "boolean", "day": "date"}  # fmt: skip


@pytest.fixture
def pg(pg_database: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        cols = ", ".join(f"{n} {t}" for n, t in PG_TYPES.items())
        conn.execute(f"CREATE TABLE staged (n serial, {cols})")
        yield conn


def _copied(conn: psycopg.Connection[Any], payload: bytes) -> list[tuple[Any, ...]]:
    conn.execute("TRUNCATE staged RESTART IDENTITY")
    names = ", ".join(PG_TYPES)
    with conn.cursor() as cur, cur.copy(f"COPY staged ({names}) FROM STDIN (FORMAT csv)") as cp:
        cp.write(payload)
    return conn.execute(f"SELECT {names} FROM staged ORDER BY n").fetchall()


def _expected(table: pa.Table) -> list[tuple[Any, ...]]:
    rows = table.to_pylist()
    return [tuple(r[n] for n in PG_TYPES) for r in rows]


def _single(x: float | None) -> float | None:
    return None if x is None else struct.unpack("f", struct.pack("f", x))[0]


def _same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
    """Equal rows, reals to their sign (a REAL as the single it is: PostgreSQL prints its
    shortest text, Arrow holds the same single)."""
    assert len(got) == len(want)
    real = list(PG_TYPES).index("f")
    for g, w in zip(got, want, strict=True):
        g, w = list(g), list(w)
        g[real], w[real] = _single(g[real]), _single(w[real])
        for a, b in zip(g, w, strict=True):
            if isinstance(b, float):
                assert a == b and math.copysign(1, a) == math.copysign(1, b), (g, w)
            else:
                assert a == b, (g, w)


def test_the_c_writer_round_trips_through_copy(pg: psycopg.Connection[Any]) -> None:
    table = _table(600)
    for piece in (table, table.slice(3, 517), table.slice(13, 1)):
        payload = columnar.csv_payload(piece)
        assert payload == b"".join(
            _arrowcsv.encode(columnar._buffers(b), b.num_rows) for b in piece.to_batches()
        )
        _same(_copied(pg, payload), _expected(piece))
    # text is quoted only where it must be: the empty text, commas, quotes, CR/LF, "\"
    first = columnar.csv_payload(table.slice(0, len(TEXTS)).select(["t"])).split(b"\n")
    assert first[:6] == [b'""', b"", b"plain", b'"say ""hi"""', b'"a,b"', b'"two']


def test_arrows_writer_reads_back_the_same(pg: psycopg.Connection[Any]) -> None:
    """The fallback (a kind the C writer does not take, or no C module) as good."""
    import io

    import pyarrow.csv as pacsv

    table = _table(100)
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    assert _copied(pg, buf.getvalue()) == _copied(pg, columnar.csv_payload(table))


def test_dates_outside_years_1_to_9999_fall_back() -> None:
    days = pa.array([-719163], pa.date32())  # 0000-12-31: Arrow's writer takes it
    assert _arrowcsv.encode(columnar._buffers(pa.record_batch([days], ["d"])), 1) is None
    assert columnar.csv_payload(pa.table({"d": days})) == b"0000-12-31\n"


def test_buffers_too_short_are_refused() -> None:
    ints = pa.array([1, 2, 3], pa.int64())
    with pytest.raises(ValueError):
        _arrowcsv.encode([("l", 0, None, ints.buffers()[1], None)], 4)
    text = pa.array(["a", "bc"])
    bufs = text.buffers()
    with pytest.raises(ValueError):
        _arrowcsv.encode([("t", 1, None, bufs[2], bufs[1])], 2)
    with pytest.raises(ValueError):
        _arrowcsv.encode([("x", 0, None, ints.buffers()[1], None)], 1)
