"""XLSX in constant memory with XlsxWriter (`constant_memory` mode: each row goes to a
temporary file as it is written, strings inline, nothing of the sheet kept in memory).
XlsxWriter was chosen over openpyxl's write-only mode because it is the faster of the two
at writing, and can be told never to turn text into formulas, numbers or links.

Partitions write their rows as Parquet segments (typed, compact); the coordinator writes
the workbook from them, one sheet after another: past `sheet_rows` rows (Excel's limit,
1,048,576 with the header) the rows continue on a new sheet with the header repeated.
The manifest lists each file's sheets with their rows.

Cells: numbers as numbers, except integers beyond 2**53 and decimals a double cannot hold
exactly, which are written as text so no digit is lost (NaN and infinities too, as
`NaN`, `Infinity`, `-Infinity`); booleans; dates and timestamps as
Excel dates (timestamps with a time zone in the export's time zone, default UTC: Excel has
none); binary as base64; text longer than Excel's 32,767 characters is cut there and
counted in the manifest (`truncated_cells`)."""

from __future__ import annotations

import base64
import math
import tempfile
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

from exportd.errors import BadRequest
from exportd.formats import Column, Segment, Written, check_options
from exportd.formats.cells import TimeOptions, float_text, json_text
from exportd.formats.parquet import ParquetOptions, ParquetRowWriter, read_batches
from exportd.storage import HashingWriter, Storage

OPTIONS = ("header", "sheet_name", "timezone")
EXCEL_MAX_ROWS = 1_048_576
EXCEL_MAX_TEXT = 32_767
_EXACT_INT = 2**53
_INVALID_SHEET = set("[]:*?/\\")


class XlsxOptions:
    def __init__(self, options: dict[str, Any]) -> None:
        check_options(options, OPTIONS, "xlsx")
        self.header = options.get("header", True)
        if not isinstance(self.header, bool):
            raise BadRequest("header must be true or false", "INVALID_FORMAT_OPTIONS")
        self.sheet_name = options.get("sheet_name", "data")
        name = self.sheet_name
        if not isinstance(name, str) or not 1 <= len(name) <= 24 or set(name) & _INVALID_SHEET:
            raise BadRequest(
                "sheet_name must be 1-24 characters without []:*?/\\", "INVALID_FORMAT_OPTIONS"
            )
        self.times = TimeOptions.parse({"timezone": options.get("timezone", "UTC")})


class SheetWriter:
    """Writes rows into a workbook, starting a new sheet whenever one is full."""

    def __init__(self, path: Path, names: list[str], opts: XlsxOptions, sheet_rows: int) -> None:
        import xlsxwriter

        self.book = xlsxwriter.Workbook(
            str(path),
            {
                "constant_memory": True,
                "strings_to_formulas": False,
                "strings_to_urls": False,
                "strings_to_numbers": False,
                "tmpdir": str(path.parent),
            },
        )
        self.fmt_dt = self.book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        self.fmt_date = self.book.add_format({"num_format": "yyyy-mm-dd"})
        self.names, self.opts = names, opts
        self.capacity = sheet_rows - (1 if opts.header else 0)
        self.sheets: list[dict[str, Any]] = []
        self.truncated = 0
        self._sheet: Any = None
        self._row = 0

    def _new_sheet(self) -> None:
        n = len(self.sheets) + 1
        name = self.opts.sheet_name if n == 1 else f"{self.opts.sheet_name} ({n})"
        self._sheet = self.book.add_worksheet(name)
        self.sheets.append({"name": name, "rows": 0})
        self._row = 0
        if self.opts.header:
            for c, title in enumerate(self.names):
                self._sheet.write_string(0, c, title)
            self._row = 1

    def write_rows(self, rows: Sequence[Sequence[Any]], cells: list[Callable[..., None]]) -> None:
        for row in rows:
            if self._sheet is None or self.sheets[-1]["rows"] >= self.capacity:
                self._new_sheet()
            r, sheet = self._row, self._sheet
            for c, value in enumerate(row):
                if value is not None:
                    cells[c](sheet, r, c, value)
            self._row += 1
            self.sheets[-1]["rows"] += 1

    def close(self) -> None:
        if self._sheet is None:
            self._new_sheet()
        self.book.close()

    # -- cells ------------------------------------------------------------------------------

    def number(self, sheet: Any, r: int, c: int, v: Any) -> None:
        if isinstance(v, bool):
            sheet.write_boolean(r, c, v)
        elif isinstance(v, int) and abs(v) > _EXACT_INT:
            sheet.write_string(r, c, str(v))
        elif isinstance(v, float) and not math.isfinite(v):
            sheet.write_string(r, c, float_text(v))
        else:
            sheet.write_number(r, c, v)

    def decimal(self, sheet: Any, r: int, c: int, v: Any) -> None:
        d = v if isinstance(v, Decimal) else Decimal(str(v))
        if d.is_finite() and Decimal(repr(float(d))) == d:
            sheet.write_number(r, c, float(d))
        else:
            sheet.write_string(r, c, format(d, "f"))

    def text(self, sheet: Any, r: int, c: int, v: Any) -> None:
        s = v if isinstance(v, str) else json_text(v) if isinstance(v, (dict, list)) else str(v)
        if len(s) > EXCEL_MAX_TEXT:
            s = s[:EXCEL_MAX_TEXT]
            self.truncated += 1
        sheet.write_string(r, c, s)

    def binary(self, sheet: Any, r: int, c: int, v: Any) -> None:
        self.text(sheet, r, c, base64.b64encode(bytes(v)).decode("ascii"))

    def when(self, sheet: Any, r: int, c: int, v: Any) -> None:
        if isinstance(v, datetime):
            if v.tzinfo is not None:
                v = v.astimezone(self.opts.times.zone).replace(tzinfo=None)
            sheet.write_datetime(r, c, v, self.fmt_dt)
        elif isinstance(v, date):
            sheet.write_datetime(r, c, v, self.fmt_date)
        else:
            self.text(sheet, r, c, v)

    def cell_writers(
        self, schema: pa.Schema, columns: Sequence[Column]
    ) -> list[Callable[..., None]]:
        out: list[Callable[..., None]] = []
        for f, col in zip(schema, columns, strict=True):
            t = f.type
            if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
                out.append(self.number)
            elif pa.types.is_decimal(t) or col.kind == "decimal":
                out.append(self.decimal)
            elif pa.types.is_timestamp(t) or pa.types.is_date(t):
                out.append(self.when)
            elif pa.types.is_binary(t):
                out.append(self.binary)
            else:
                out.append(self.text)
        return out


class XlsxFormat:
    name = "xlsx"
    extension = ".xlsx"
    media_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    exact_bytes = False

    def __init__(self, options: dict[str, Any], sheet_rows: int = EXCEL_MAX_ROWS) -> None:
        self.options = XlsxOptions(options)
        self.sheet_rows = min(sheet_rows, EXCEL_MAX_ROWS)
        self.parts = ParquetOptions({"compression": "lz4"}, intermediate=True)

    def part_writer(self, out: BinaryIO, columns: Sequence[Column]) -> ParquetRowWriter:
        return ParquetRowWriter(out, columns, self.parts)

    def file_size(self, columns: Sequence[Column], segment_sizes: Sequence[int]) -> int:
        return sum(segment_sizes)

    def assemble(
        self, storage: Storage, key: str, segments: Sequence[Segment], columns: Sequence[Column]
    ) -> Written:
        full = [s for s in segments if s.rows]
        with tempfile.TemporaryDirectory(prefix="exportd-xlsx-") as tmp:
            path = Path(tmp) / "book.xlsx"
            book = SheetWriter(path, [c.name for c in columns], self.options, self.sheet_rows)
            cells: list[Callable[..., None]] | None = None
            for batch in read_batches(storage, full):
                cells = cells or book.cell_writers(batch.schema, columns)
                pylists = [col.to_pylist() for col in batch.columns]
                book.write_rows(list(zip(*pylists, strict=True)), cells)
            book.close()
            written = _store(storage, key, path)
        details: dict[str, Any] = {"sheets": book.sheets}
        if book.truncated:
            details["truncated_cells"] = book.truncated
        return Written(written.bytes, written.sha256, details)


def _store(storage: Storage, key: str, path: Path) -> Written:
    with storage.open_write(key) as raw, open(path, "rb") as src:
        out = HashingWriter(raw)
        while chunk := src.read(1 << 20):
            out.write(chunk)
    return Written(out.count, out.hexdigest())
