"""The vectorised CSV renderer (`ArrowCsv`) against the generic CSV writer: the same bytes
for every column type it accepts, in several dialects; `Unsupported` for the others."""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pyarrow as pa
import pytest

from exportd.formats.arrow_csv import ArrowCsv, Unsupported
from exportd.formats.text import CsvEncoder, CsvOptions

DIALECTS = [
    CsvOptions(),
    CsvOptions(delimiter=";", quote="'", null="NULL", line_ending="\r\n"),
    CsvOptions(delimiter="\t", spreadsheet_safe=False),
    CsvOptions(delimiter="1", quote="e", null="-"),  # number and boolean text needs quoting
]

TEXTS = [
    "plain", "", "=SUM(A1)", "+1", "-1", "@x", "\tTab", "\rCR", "a,b", 'say "hi"', "two\nlines",
    "semi;colon", "it's", "tab\tin", "café ☕", "\\.", "NULL", "-", "1e", "e", None,
]  # fmt: skip


def _floats() -> list[float | None]:
    rnd = random.Random(7)
    values: list[float | None] = [
        0.0, -0.0, 91.0, -91.0, 0.1, 1e-4, 9.99e-5, 1e-5, 5e-324, 1e10, 9999999999.5, 1e14,
        123456789012345.0, 1e15, 1.5e15, 1e16, 1e22, 1.7976931348623157e308, 2.0**53,
        1.0000000000000002, math.pi, -math.e, None,
    ]  # fmt: skip
    for _ in range(3000):
        x = 10 ** rnd.uniform(-8, 18) * rnd.choice((1, -1))
        values += [x, round(x, rnd.randint(0, 8)), float(int(x))]
    return values


COLUMNS: dict[str, tuple[pa.Array, list[Any]]] = {}


def _column(name: str, arr: pa.Array, python: list[Any] | None = None) -> None:
    COLUMNS[name] = (arr, arr.to_pylist() if python is None else python)


_column("int", pa.array([0, -1, 7, 2**63 - 1, -(2**63), None], pa.int64()))
_column("int32", pa.array([5, None, -3], pa.int32()))
_column("float", pa.array(_floats(), pa.float64()))
_column("text", pa.array(TEXTS, pa.string()))
_column("bool", pa.array([True, False, None]), ["true", "false", None])  # as Flattener gives
_column("null", pa.nulls(3))
_column("empty object", pa.array([{}, None, {}], pa.struct([])), ["{}", None, "{}"])
for items in (
    [["a", "b"], [], None, ['q"uote', "back\\slash", "-x", "é", "\x7f", "\u2028"], [None, "x"]],
    [["ctl\x01", "nl\n"], ["ok"]],
    [[1, -2, None], [], None, [2**62]],
    [[True, None, False], None],
    [[None, None], []],
):
    arr = pa.array(items)
    _column(
        f"list {arr.type} {len(COLUMNS)}",
        arr,
        [None if v is None else orjson.dumps(v).decode() for v in items],
    )


def generic(opts: CsvOptions, cols: list[list[Any]]) -> bytes:
    rows = list(zip(*cols, strict=True))
    return CsvEncoder(opts, len(cols)).encode(rows).encode()


@pytest.mark.parametrize("opts", DIALECTS, ids=range(len(DIALECTS)))
@pytest.mark.parametrize("name", list(COLUMNS))
def test_each_column_type_renders_as_the_generic_writer(opts: CsvOptions, name: str) -> None:
    arr, python = COLUMNS[name]
    other = pa.array(list(range(len(arr))), pa.int64())
    for width, cols, py in (
        (2, [arr, other], [python, other.to_pylist()]),
        (1, [arr], [python]),  # a single column quotes `\.`
    ):
        csv = ArrowCsv(opts, width)
        cells = [csv.cells(c) for c in cols]
        assert csv.rows(cells, len(arr)) == generic(opts, py)


@pytest.mark.parametrize("opts", DIALECTS, ids=range(len(DIALECTS)))
def test_rows_of_many_columns_and_null_columns(opts: CsvOptions) -> None:
    n = 40
    cols = [
        pa.array([f"r{i}" for i in range(n)]),
        None,  # a column no document of this chunk has
        pa.array([i * 1.5 for i in range(n)]),
        pa.array([None] * n, pa.string()),
    ]
    csv = ArrowCsv(opts, len(cols))
    got = csv.rows([None if c is None else csv.cells(c) for c in cols], n)
    py = [[None] * n if c is None else c.to_pylist() for c in cols]
    assert got == generic(opts, py)
    all_null = csv.rows([None] * len(cols), 3)
    assert all_null == generic(opts, [[None] * 3 for _ in cols])


def test_large_batches_are_joined_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    import exportd.formats.arrow_csv as module

    monkeypatch.setattr(module, "MAX_CELLS", 10)
    arr = pa.array([f"v,{i}" for i in range(25)])
    csv = ArrowCsv(CsvOptions(), 3)
    cells = csv.cells(arr)
    ints = csv.cells(pa.array(range(25)))
    assert csv.rows([cells, None, ints], 25) == generic(
        CsvOptions(), [arr.to_pylist(), [None] * 25, list(range(25))]
    )


@pytest.mark.parametrize(
    "arr",
    [
        pa.array([{"a": 1}]),
        pa.array([[1.5, 2.0]]),
        pa.array([[{"k": 1}]]),
        pa.array([[[1]]]),
        pa.array([b"bytes"]),
        pa.array([1.5], pa.float32()),
    ],
)
def test_other_types_are_unsupported(arr: pa.Array) -> None:
    with pytest.raises(Unsupported):
        ArrowCsv(CsvOptions(), 1).cells(arr)
