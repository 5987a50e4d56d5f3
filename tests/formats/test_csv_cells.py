"""The CSV encoder's column shortcuts give the same cells as the rules cell by cell,
including SQLite's mixed-type columns and the floats PostgreSQL prints in exponent form."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

from exportd.formats.text import CsvEncoder, CsvOptions


def encode(rows: list[tuple[Any, ...]], **options: Any) -> str:
    return CsvEncoder(CsvOptions.parse(options, ","), len(rows[0])).encode(rows)


def test_floats_like_postgresql() -> None:
    values = [1.0, 1e15, -2.5e15, 1e16, 1.5e-5, 0.1234567890123456, float("nan"), -0.0, None]
    got = encode([(v,) for v in values]).splitlines()
    assert got == [
        "1",
        "1e+15",
        "-2.5e+15",
        "1e+16",
        "1.5e-05",
        "0.1234567890123456",
        "NaN",
        "-0",
        "",
    ]


def test_mixed_types_in_one_column_fall_back_to_the_general_rule() -> None:
    rows = [("text", 1.5), (7, "n/a"), (None, 2.0), ("=x", Decimal("1.10"))]
    got = list(csv.reader(io.StringIO(encode(rows), newline="")))
    assert got == [["text", "1.5"], ["7", "n/a"], ["", "2"], ["'=x", "1.10"]]


def test_text_column_shortcut_agrees_with_cell_rules() -> None:
    plain = [("a",), ("b",), (None,)]
    assert encode(plain) == "a\nb\n\n"
    tricky = [("a",), ("",), ("-1",), ('say "hi"',), (None,)]
    assert encode(tricky) == 'a\n""\n\'-1\n"say ""hi"""\n\n'
    assert encode([("\\.",)]) == '"\\."\n'  # alone on a line it would end a COPY stream
    assert encode([("NULL",), (None,)], null="NULL") == '"NULL"\nNULL\n'
