"""SpreadsheetML (the XML inside an .xlsx) rendered a record batch at a time with Arrow
compute, and the workbook's package written around it with `zipfile`.

Why not XlsxWriter: it writes correct workbooks, but one Python call per cell; on the
benchmark's 336,776 x 20 cells that was 40-50 s, where rendering whole columns at once
in C++ (this module) takes a few seconds, most of them deflate. The cell rules are the
ones the XLSX format documents (`formats/xlsx.py`); values Arrow cannot render exactly
by those rules (decimals, binary, nested values, text with control characters,
integers beyond 2**53, non-finite floats) take a Python function per value of that
column only. The package is the minimal one Excel, LibreOffice and openpyxl read:
content types, relationships, a workbook, one stylesheet (dates and timestamps) and the
sheets, each with an explicit reference on every row and cell."""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import escape

import pyarrow as pa
import pyarrow.compute as pc

from exportd.formats.cells import TimeOptions, bytes_text, float_text, json_text

EXCEL_MAX_TEXT = 32_767
EXACT_INT = 2**53
_EPOCH_SERIAL = 25_569  # 1970-01-01 as an Excel serial (1900 system, its leap-year bug)
_US_PER_DAY = 86_400_000_000
# the values `text_xml` must see (RE2 syntax, run by Arrow)
_NEEDS_PYTHON = r"[\x00-\x08\x0b-\x1f]|_x[0-9A-Fa-f]{4}_|\x{FFFE}|\x{FFFF}"
STYLE_DATETIME, STYLE_DATE = 1, 2
_INLINE_OPEN, _INLINE_CLOSE = ' t="inlineStr"><is><t xml:space="preserve">', "</t></is></c>"
Ref = tuple[str, pa.Array]  # a column's letter, the rows' numbers (as text)
Render = Callable[[pa.Array, Ref], pa.Array]  # a column's values -> its cells (null: none)
NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG = "http://schemas.openxmlformats.org/package/2006"
_HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'


def column_letters(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA, ... (Excel's column names)."""
    name = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        name = chr(65 + rem) + name
    return name


_LITERAL_ESCAPE = re.compile(r"_x[0-9A-Fa-f]{4}_")
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\ufffe\uffff]")


def text_xml(s: str) -> str:
    """A text value as OOXML holds it: a literal `_xHHHH_` protected (its `_` written as
    `_x005F_`, as readers decode escapes), then the characters XML cannot hold written as
    `_xHHHH_` escapes (a CR too: XML would turn it into a LF), then XML-escaped."""
    s = _LITERAL_ESCAPE.sub(lambda m: "_x005F_" + m.group(0)[1:], s)
    s = _UNSAFE.sub(lambda m: f"_x{ord(m.group(0)):04X}_", s)
    return escape(s)


@dataclass
class SheetRenderer:
    """Renders batches of one schema into `<row>` elements; counts cut texts."""

    schema: pa.Schema
    kinds: Sequence[str]
    times: TimeOptions
    truncated: int = 0
    _cells: list[Render] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.letters = [column_letters(i) for i in range(len(self.schema))]
        self._cells = [
            self._renderer(f.type, k) for f, k in zip(self.schema, self.kinds, strict=True)
        ]

    # -- whole columns --------------------------------------------------------------------

    def _renderer(self, t: pa.DataType, kind: str) -> Render:
        if pa.types.is_boolean(t):
            return self._booleans
        if pa.types.is_integer(t):
            return self._integers
        if pa.types.is_floating(t):
            return self._floats
        if pa.types.is_decimal(t) or kind == "decimal":
            return self._python(self._decimal)
        if pa.types.is_timestamp(t):
            return self._timestamps
        if pa.types.is_date(t):
            return self._dates
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return self._strings
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return self._python(lambda v: self._text_cell(bytes_text(v)))
        return self._python(self._any)

    @staticmethod
    def _wrap(ref: Ref, opening: str, value: pa.Array, closing: str) -> pa.Array:
        """`<c r="{letter}{row}"{opening}{value}{closing}` for each value (null: null), in
        one pass."""
        letter, numbers = ref
        return pc.binary_join_element_wise(
            f'<c r="{letter}', numbers, f'"{opening}', value, closing, ""
        )

    def _integers(self, arr: pa.Array, ref: Ref) -> pa.Array:
        digits = pc.cast(arr, pa.string())
        number = self._wrap(ref, "><v>", digits, "</v></c>")
        if arr.type.bit_width < 54:
            return number
        big = pc.greater(arr, pa.scalar(EXACT_INT, arr.type))
        if pa.types.is_signed_integer(arr.type):
            big = pc.or_(big, pc.less(arr, pa.scalar(-EXACT_INT, arr.type)))
        if not pc.any(big).as_py():
            return number
        # beyond a double's exact integers: text, digit for digit
        return pc.if_else(big, self._inline(digits, ref), number)

    def _floats(self, arr: pa.Array, ref: Ref) -> pa.Array:
        arr = pc.cast(arr, pa.float64())
        number = self._wrap(ref, "><v>", pc.cast(arr, pa.string()), "</v></c>")
        finite = pc.is_finite(arr)
        if pc.all(pc.or_kleene(finite, pc.is_null(arr))).as_py():
            return number
        # NaN and the infinities as their words (text)
        words = pa.array([None if v is None else float_text(v) for v in arr.to_pylist()])
        return pc.if_else(finite, number, self._inline(words, ref))

    def _booleans(self, arr: pa.Array, ref: Ref) -> pa.Array:
        return self._wrap(ref, ' t="b"><v>', pc.if_else(arr, "1", "0"), "</v></c>")

    def _serial(self, micros: pa.Array, style: int, ref: Ref) -> pa.Array:
        """Microseconds since 1970 (wall clock) as Excel serial days, with a style."""
        days = pc.add(
            pc.divide(pc.cast(micros, pa.float64()), float(_US_PER_DAY)), float(_EPOCH_SERIAL)
        )
        # Excel's 1900 system counts a 29 February 1900 that never was: serials up to 60
        # (before 1 March 1900) are one day lower than the count of days
        days = pc.if_else(pc.less(days, 61.0), pc.subtract(days, 1.0), days)
        return self._wrap(ref, f' s="{style}"><v>', pc.cast(days, pa.string()), "</v></c>")

    def _timestamps(self, arr: pa.Array, ref: Ref) -> pa.Array:
        t: pa.TimestampType = arr.type
        if t.tz is not None:  # wall-clock time in the export's time zone (Excel has none)
            arr = pc.local_timestamp(arr.cast(pa.timestamp(t.unit, self.times.zone_name)))
        us = pc.cast(arr, pa.timestamp("us"), safe=False)  # nanoseconds: Excel has less
        return self._serial(pc.cast(us, pa.int64()), STYLE_DATETIME, ref)

    def _dates(self, arr: pa.Array, ref: Ref) -> pa.Array:
        days = pc.cast(pc.cast(arr, pa.date32()), pa.int32())
        micros = pc.multiply(pc.cast(days, pa.int64()), _US_PER_DAY)
        return self._serial(micros, STYLE_DATE, ref)

    def _strings(self, arr: pa.Array, ref: Ref) -> pa.Array:
        arr = pc.cast(arr, pa.string())
        long = pc.greater(pc.utf8_length(arr), EXCEL_MAX_TEXT)
        n_long = pc.sum(long).as_py() or 0
        if n_long:
            self.truncated += n_long
            arr = pc.if_else(long, pc.utf8_slice_codeunits(arr, 0, EXCEL_MAX_TEXT), arr)
        escaped = self._escape(arr)
        odd = pc.match_substring_regex(arr, _NEEDS_PYTHON)
        if pc.any(odd).as_py():  # control characters, literal escapes: value by value
            fixed = [
                text_xml(v) if v is not None and o else None
                for v, o in zip(arr.to_pylist(), odd.to_pylist(), strict=True)
            ]
            escaped = pc.if_else(odd, pa.array(fixed, pa.string()), escaped)
        return self._wrap(ref, _INLINE_OPEN, escaped, _INLINE_CLOSE)

    @staticmethod
    def _escape(arr: pa.Array) -> pa.Array:
        """XML's three escapes, in passes only over the batches that need them."""
        if not pc.any(pc.match_substring_regex(arr, "[&<>]")).as_py():
            return arr
        arr = pc.replace_substring(arr, "&", "&amp;")
        arr = pc.replace_substring(arr, "<", "&lt;")
        return pc.replace_substring(arr, ">", "&gt;")

    def _inline(self, text: pa.Array, ref: Ref) -> pa.Array:
        """Plain text (no control characters: digits, words) as an inline string."""
        return self._wrap(
            ref, _INLINE_OPEN, self._escape(pc.cast(text, pa.string())), _INLINE_CLOSE
        )

    # -- value by value (rare types) --------------------------------------------------------

    def _python(self, cell: Callable[[Any], str]) -> Render:
        def render(arr: pa.Array, ref: Ref) -> pa.Array:
            body = pa.array([None if v is None else cell(v) for v in arr.to_pylist()], pa.string())
            letter, numbers = ref
            return pc.binary_join_element_wise(f'<c r="{letter}', numbers, '"', body, "")

        return render

    def _text_cell(self, s: str) -> str:
        if len(s) > EXCEL_MAX_TEXT:
            s = s[:EXCEL_MAX_TEXT]
            self.truncated += 1
        return f' t="inlineStr"><is><t xml:space="preserve">{text_xml(s)}</t></is></c>'

    def _decimal(self, v: Any) -> str:
        d = v if isinstance(v, Decimal) else Decimal(str(v))
        if d.is_finite() and Decimal(repr(float(d))) == d:
            return f"><v>{float(d)!r}</v></c>"
        return self._text_cell(format(d, "f"))

    def _any(self, v: Any) -> str:
        if isinstance(v, bool):
            return f' t="b"><v>{int(v)}</v></c>'
        if isinstance(v, int) and abs(v) <= EXACT_INT:
            return f"><v>{v}</v></c>"
        if isinstance(v, float) and math.isfinite(v):
            return f"><v>{v!r}</v></c>"
        if isinstance(v, datetime):
            if v.tzinfo is not None:
                v = v.astimezone(self.times.zone).replace(tzinfo=None)
            return f' s="{STYLE_DATETIME}"><v>{_serial_of(v)!r}</v></c>'
        if isinstance(v, date):
            return f' s="{STYLE_DATE}"><v>{_serial_of(datetime(v.year, v.month, v.day))!r}</v></c>'
        if isinstance(v, (dict, list)):
            return self._text_cell(json_text(v))
        if isinstance(v, float):
            return self._text_cell(float_text(v))
        return self._text_cell(str(v))

    # -- rows -------------------------------------------------------------------------------

    def rows(self, batch: pa.RecordBatch, first_row: int) -> memoryview:
        """The batch's rows as `<row>` elements, the first numbered `first_row` (1-based)."""
        n = batch.num_rows
        numbers = pc.cast(pa.array(range(first_row, first_row + n), pa.int64()), pa.string())
        cells = []
        for i, arr in enumerate(batch.columns):
            cells.append(self._cells[i](arr, (self.letters[i], numbers)))
        rows = pc.binary_join_element_wise(
            '<row r="', numbers, '">', *cells, "</row>\n", "", null_handling="replace"
        )
        return _joined(rows)


def header_row(names: Sequence[str], row: int = 1) -> bytes:
    """The header: each name as text."""
    cells = "".join(
        f'<c r="{column_letters(i)}{row}" t="inlineStr"><is><t xml:space="preserve">'
        f"{text_xml(name)}</t></is></c>"
        for i, name in enumerate(names)
    )
    return f'<row r="{row}">{cells}</row>\n'.encode()


def _serial_of(v: datetime) -> float:
    days = (v - datetime(1970, 1, 1)).total_seconds() / 86_400 + _EPOCH_SERIAL
    return days - 1 if days < 61 else days


def _joined(rows: pa.Array) -> memoryview:
    """The concatenation of a string array's values (none null), straight from its data
    buffer: no Python string per row."""
    if not len(rows):
        return memoryview(b"")
    offsets = memoryview(rows.buffers()[1]).cast(
        "q" if pa.types.is_large_string(rows.type) else "i"
    )
    start, end = offsets[rows.offset], offsets[rows.offset + len(rows)]
    return memoryview(rows.buffers()[2])[start:end]


# ---- the package ------------------------------------------------------------------------


STYLES = f"""{_HEAD}<styleSheet xmlns="{NS}"><numFmts count="2"><numFmt numFmtId="164" formatCode="yyyy\\-mm\\-dd\\ hh:mm:ss"/><numFmt numFmtId="165" formatCode="yyyy\\-mm\\-dd"/></numFmts><fonts count="1"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts><fills count="2"><fill><patternFill patternType="none"/></fill><fill><patternFill patternType="gray125"/></fill></fills><borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders><cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs><cellXfs count="3"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/><xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/><xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/></cellXfs><cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles></styleSheet>"""


class Package:
    """An .xlsx being written: sheets streamed one after another, then the parts that
    list them."""

    def __init__(self, path: Path, compresslevel: int = 1) -> None:
        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel)
        self.sheets: list[str] = []
        self._open: IO[bytes] | None = None

    def new_sheet(self, name: str) -> IO[bytes]:
        self.end_sheet()
        self.sheets.append(name)
        n = len(self.sheets)
        self._open = self.zip.open(f"xl/worksheets/sheet{n}.xml", "w", force_zip64=True)
        self._open.write(f'{_HEAD}<worksheet xmlns="{NS}" xmlns:r="{REL}"><sheetData>\n'.encode())
        return self._open

    def end_sheet(self) -> None:
        if self._open is not None:
            self._open.write(b"</sheetData></worksheet>")
            self._open.close()
            self._open = None

    def close(self) -> None:
        self.end_sheet()
        n = len(self.sheets)
        sheets = "".join(
            f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            for i in range(1, n + 1)
        )
        self.zip.writestr(
            "[Content_Types].xml",
            f'{_HEAD}<Types xmlns="{PKG}/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/styles.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>{sheets}</Types>',
        )
        self.zip.writestr(
            "_rels/.rels",
            f'{_HEAD}<Relationships xmlns="{PKG}/relationships"><Relationship Id="rId1" Type="{REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>',
        )
        entries = "".join(
            f'<sheet name="{escape(name, {chr(34): "&quot;"})}" sheetId="{i}" r:id="rId{i}"/>'
            for i, name in enumerate(self.sheets, start=1)
        )
        self.zip.writestr(
            "xl/workbook.xml",
            f'{_HEAD}<workbook xmlns="{NS}" xmlns:r="{REL}"><sheets>{entries}</sheets></workbook>',
        )
        rels = "".join(
            f'<Relationship Id="rId{i}" Type="{REL}/worksheet" Target="worksheets/sheet{i}.xml"/>'
            for i in range(1, n + 1)
        )
        rels += f'<Relationship Id="rId{n + 1}" Type="{REL}/styles" Target="styles.xml"/>'
        self.zip.writestr(
            "xl/_rels/workbook.xml.rels",
            f'{_HEAD}<Relationships xmlns="{PKG}/relationships">{rels}</Relationships>',
        )
        self.zip.writestr("xl/styles.xml", STYLES)
        self.zip.close()
