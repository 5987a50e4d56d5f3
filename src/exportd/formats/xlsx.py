"""XLSX, streamed: each record batch's rows are rendered to SpreadsheetML at once with
Arrow compute and deflated into the workbook as they come (`formats/xlsx_sheet.py`), so
memory does not grow with the rows. Text is always inline text, never a formula, number
or link.

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

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from exportd.errors import BadRequest
from exportd.formats import Column, Segment, Written, check_options
from exportd.formats.cells import TimeOptions
from exportd.formats.parquet import ParquetOptions, ParquetRowWriter, read_batches, unified_schema
from exportd.formats.xlsx_sheet import Package, SheetRenderer, header_row
from exportd.storage import HashingWriter, Storage

OPTIONS = ("header", "sheet_name", "timezone")
EXCEL_MAX_ROWS = 1_048_576
_INVALID_SHEET = set("[]:*?/\\")


# rows rendered to XML at once: the XML of a whole row group (several times its Arrow
# size) would be held in memory at once
RENDER_ROWS = 16_384


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
        names = [c.name for c in columns]
        header = self.options.header
        capacity = self.sheet_rows - (1 if header else 0)
        sheets: list[dict[str, Any]] = []
        renderer: SheetRenderer | None = None
        with tempfile.TemporaryDirectory(prefix="exportd-xlsx-") as tmp:
            path = Path(tmp) / "book.xlsx"
            book = Package(path)
            out: Any = None

            def new_sheet() -> Any:
                n = len(sheets) + 1
                name = self.options.sheet_name if n == 1 else f"{self.options.sheet_name} ({n})"
                sheets.append({"name": name, "rows": 0})
                sheet = book.new_sheet(name)
                if header:
                    sheet.write(header_row(names))
                return sheet

            schema = unified_schema(storage, full) if full else None
            for batch in read_batches(storage, full, schema):
                if renderer is None:
                    kinds = [c.kind for c in columns]
                    renderer = SheetRenderer(batch.schema, kinds, self.options.times)
                done = 0
                while done < batch.num_rows:
                    if out is None or sheets[-1]["rows"] >= capacity:
                        out = new_sheet()
                    at = sheets[-1]["rows"]
                    take = min(capacity - at, batch.num_rows - done, RENDER_ROWS)
                    first = at + (2 if header else 1)
                    out.write(renderer.rows(batch.slice(done, take), first))
                    sheets[-1]["rows"] += take
                    done += take
            if out is None:
                new_sheet()
            book.close()
            written = _store(storage, key, path)
        details: dict[str, Any] = {"sheets": sheets}
        truncated = renderer.truncated if renderer else 0
        if truncated:
            details["truncated_cells"] = truncated
        return Written(written.bytes, written.sha256, details)


def _store(storage: Storage, key: str, path: Path) -> Written:
    with storage.open_write(key) as raw, open(path, "rb") as src:
        out = HashingWriter(raw)
        while chunk := src.read(1 << 20):
            out.write(chunk)
    return Written(out.count, out.hexdigest())
