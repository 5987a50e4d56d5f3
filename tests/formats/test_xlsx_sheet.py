"""The XLSX writer renders whole columns with Arrow; each value must read back (openpyxl,
full parse) exactly as the same value written cell by cell by XlsxWriter reads back, for
every kind of value the format documents, and as the documented rule says."""

from __future__ import annotations

import base64
import zipfile
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pyarrow as pa
import pytest

from exportd.formats.cells import TimeOptions
from exportd.formats.xlsx_sheet import Package, SheetRenderer, column_letters, header_row

TZ = timezone(timedelta(hours=-7))
NAMES = ["i", "big", "f", "b", "t", "ts", "tsn", "d", "dec", "bin", "j"]
ROWS: list[list[Any]] = [
    [1, 2**53, 0.1, True, "plain", datetime(2024, 1, 1, tzinfo=UTC),
     datetime(2024, 2, 29, 12, 30, 15, 250000), date(2024, 2, 29), Decimal("1.5"), b"", [1, 2]],
    [None, 2**53 + 1, 1e-300, False, "a & b <c> \"q\" 'x'", datetime(1970, 1, 1, tzinfo=TZ),
     datetime(1900, 1, 1), date(1900, 2, 28), Decimal("12345678901234567890.12"),
     bytes(range(10)), {"k": "v"}],
    [-(2**63), -(2**53) - 1, float("nan"), None, "line\nbreak\r\nand\ttab \x01 ctl",
     None, datetime(1900, 3, 1), date(1900, 3, 1), None, None, None],
    [2**63 - 1, 7, float("inf"), None, "literal _x000D_ stays", None, None, None,
     Decimal("-0.0000001"), None, None],
    [0, None, -0.0, None, "  spaces kept  ", None, None, None, None, None, None],
    [5, 9, float("-inf"), None, "x" * 40_000 + "tail", None, None, None, None, None, None],
    [6, None, 1.5e15, None, "=SUM(A1:A2)", None, None, None, None, None, None],
    [7, None, None, None, "café ☕ 𝄞 中文", None, None, None, None, None, None],
]  # fmt: skip
SCHEMA = pa.schema([
    ("i", pa.int64()), ("big", pa.int64()), ("f", pa.float64()), ("b", pa.bool_()),
    ("t", pa.string()), ("ts", pa.timestamp("us", "UTC")), ("tsn", pa.timestamp("us")),
    ("d", pa.date32()), ("dec", pa.decimal128(38, 10)), ("bin", pa.binary()),
    ("j", pa.string()),
])  # fmt: skip
KINDS = ["int", "int", "float", "bool", "str", "datetime", "datetime", "date", "decimal",
         "bytes", "json"]  # fmt: skip


def _batch() -> pa.RecordBatch:
    import json

    cols = list(zip(*ROWS, strict=True))
    arrays = []
    for f, values in zip(SCHEMA, cols, strict=True):
        if f.name == "j":
            values = tuple(
                None if v is None else json.dumps(v, separators=(",", ":")) for v in values
            )
        arrays.append(pa.array(values, f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def _ours(path: Path, zone: str = "UTC") -> SheetRenderer:
    r = SheetRenderer(SCHEMA, KINDS, TimeOptions.parse({"timezone": zone}))
    book = Package(path)
    sheet = book.new_sheet("data & more")
    sheet.write(header_row(NAMES))
    batch = _batch()
    sheet.write(r.rows(batch.slice(0, 3), 2))  # two batches: row numbers carry on
    sheet.write(r.rows(batch.slice(3), 5))
    book.close()
    return r


def _read(path: Path) -> list[tuple[Any, ...]]:
    book = openpyxl.load_workbook(path)  # the full parser, not the lenient read-only one
    return [tuple(row) for row in book.worksheets[0].iter_rows(values_only=True)]


def expected(zone: Any = UTC) -> list[tuple[Any, ...]]:
    """The documented rules, written out independently of exportd's code."""
    out: list[tuple[Any, ...]] = [tuple(NAMES)]
    for row in ROWS:
        cells: list[Any] = []
        for name, v in zip(NAMES, row, strict=True):
            if v is None:
                cells.append(None)
            elif name in ("i", "big"):
                cells.append(str(v) if abs(v) > 2**53 else v)
            elif name == "f":
                cells.append(
                    v if v == v and abs(v) != float("inf")
                    else {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(v)]
                )  # fmt: skip
            elif name == "t":
                cells.append(v[:32_767].replace("\r", "_x000D_").replace("\x01", "_x0001_")
                             .replace("_x000D_ stays", "_x005F_x000D_ stays"))  # fmt: skip
            elif name == "ts":
                cells.append(v.astimezone(zone).replace(tzinfo=None))
            elif name == "d":
                cells.append(datetime(v.year, v.month, v.day))
            elif name == "dec":  # as the column holds it: ten decimals
                v = v.quantize(Decimal("1e-10"), context=Context(prec=50))
                cells.append(float(v) if Decimal(repr(float(v))) == v else format(v, "f"))
            elif name == "bin":
                cells.append(base64.b64encode(v).decode())
            elif name == "j":
                import json

                cells.append(json.dumps(v, separators=(",", ":")))
            else:
                cells.append(v)
        out.append(tuple(cells))
    return out


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, datetime) and isinstance(b, datetime):
        return abs(a - b) < timedelta(milliseconds=1)
    return bool(a == b)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
def test_every_value_reads_back_by_the_documented_rule(tmp_path: Path, zone: str) -> None:
    from zoneinfo import ZoneInfo

    r = _ours(tmp_path / "ours.xlsx", zone)
    got = _read(tmp_path / "ours.xlsx")
    want = expected(UTC if zone == "UTC" else ZoneInfo(zone))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert all(_close(a, b) for a, b in zip(g, w, strict=True)), (g, w)
    assert r.truncated == 1


def test_same_cells_as_xlsxwriter_cell_by_cell(tmp_path: Path) -> None:
    """XlsxWriter as the oracle for the values both write the same way (the 1900 dates
    and the serials around Excel's phantom 29 February included)."""
    import xlsxwriter

    _ours(tmp_path / "ours.xlsx")
    book = xlsxwriter.Workbook(str(tmp_path / "theirs.xlsx"), {"strings_to_formulas": False})
    sheet = book.add_worksheet("data")
    dt = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
    sheet.write_row(0, 0, NAMES)
    for r, row in enumerate(ROWS, start=1):
        for c, (name, v) in enumerate(zip(NAMES, row, strict=True)):
            if (
                v is None
                or name not in ("i", "b", "ts", "tsn", "d")
                or (name == "i" and abs(v) > 2**53)
            ):
                continue
            if v == datetime(1900, 1, 1):  # XlsxWriter takes it for a time of day (serial 0)
                continue
            if isinstance(v, datetime | date):
                v = (
                    v.astimezone(UTC).replace(tzinfo=None)
                    if isinstance(v, datetime) and v.tzinfo
                    else v
                )
                sheet.write_datetime(r, c, v, dt)
            else:
                sheet.write(r, c, v)
    book.close()
    ours, theirs = _read(tmp_path / "ours.xlsx"), _read(tmp_path / "theirs.xlsx")
    for o, t in zip(ours[1:], theirs[1:], strict=True):
        for c, name in enumerate(NAMES):
            if t[c] is not None:
                assert _close(o[c], t[c]), (name, o[c], t[c])


def test_the_package_is_well_formed(tmp_path: Path) -> None:
    _ours(tmp_path / "ours.xlsx")
    with zipfile.ZipFile(tmp_path / "ours.xlsx") as z:
        assert z.testzip() is None
        names = set(z.namelist())
        assert {"[Content_Types].xml", "_rels/.rels", "xl/workbook.xml",
                "xl/_rels/workbook.xml.rels", "xl/styles.xml", "xl/worksheets/sheet1.xml"} <= names  # fmt: skip
        import xml.etree.ElementTree as ET

        for name in names:  # every part parses as XML
            ET.fromstring(z.read(name))
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
        assert '<c r="E6" t="inlineStr">' in sheet  # explicit references everywhere
        assert "<f>" not in sheet  # text is never a formula
    book = openpyxl.load_workbook(tmp_path / "ours.xlsx")
    assert book.sheetnames == ["data & more"]


def test_column_letters() -> None:
    assert [column_letters(i) for i in (0, 25, 26, 51, 52, 701, 702, 16383)] == [
        "A", "Z", "AA", "AZ", "BA", "ZZ", "AAA", "XFD"
    ]  # fmt: skip
