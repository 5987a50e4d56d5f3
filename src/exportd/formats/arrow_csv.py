"""CSV rows rendered from Arrow columns with pyarrow.compute, byte-identical to the generic
CSV writer (`exportd.formats.text.CsvEncoder`, the rules of docs/formats.md) for the
column types it accepts; any other type raises `Unsupported` (the caller then takes the
generic path).

Each column becomes an array of finished cells (rendered, neutralised, quoted; NULL as
the null text); the cells of a row are joined with the delimiter and the line ending is
appended, so the data buffer of the joined array is the CSV text of the rows.

| Arrow type | cell |
| --- | --- |
| null | the null text |
| bool | `true` / `false` |
| integers | decimal digits |
| float64 | `float_text` (shortest round-trip digits, `91.0` is `91`); Arrow's own text is used where it is the same (1e-4 <= abs < 1e10, and zeros), Python's elsewhere |
| string | spreadsheet neutralisation (`'` before `= + - @ TAB CR`), then quoting |
| list of null, bool, integers or string | compact JSON text, as orjson writes it |
| struct without fields | `{}` (an empty JSON object) |
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from exportd.formats.cells import SPREADSHEET_TRIGGERS, float_text
from exportd.formats.text import CsvOptions


class Unsupported(Exception):
    """A column the vectorised renderer cannot write exactly as the generic writer."""


# Arrow's float64 text equals Python's shortest repr (without `.0`) in this range.
_PLAIN_LOW, _PLAIN_HIGH = 1e-4, 1e10
# At most this many cells (rows x columns) per join: offsets stay far below 2 GiB.
MAX_CELLS = 1 << 24


def _re2_class(chars: str) -> str:
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"


_PLAIN_CHARS = set("0123456789+-.eEaNIifnty" + "truefals")  # numbers' and booleans' text
_TRIGGERS = "^" + _re2_class("".join(SPREADSHEET_TRIGGERS))
_JSON_CONTROL = _re2_class("".join(chr(i) for i in range(32)))


def _is_integer(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t))


def _any(mask: pa.Array | pa.ChunkedArray) -> bool:
    return bool(pc.any(mask).as_py())


class ArrowCsv:
    """Renders Arrow columns as CSV rows in one dialect (`CsvOptions`)."""

    def __init__(self, opts: CsvOptions, width: int) -> None:
        self.o = opts
        self.width = width
        self._special = _re2_class(opts.delimiter + opts.quote + "\r\n")
        self._qq = opts.quote * 2
        self._plain = not ({opts.delimiter, opts.quote} & _PLAIN_CHARS) and opts.null == ""
        self._writer = _writer_options(opts)
        self._plain_rows = self._writer is not None

    # ---- one column ------------------------------------------------------------------

    def cells(self, arr: pa.Array) -> pa.Array | None:
        """The finished cells of a column (None: every cell is NULL)."""
        t = arr.type
        if pa.types.is_null(t) or arr.null_count == len(arr):
            return None
        if pa.types.is_boolean(t) or _is_integer(t) or pa.types.is_float64(t):
            text = self._floats(arr) if pa.types.is_float64(t) else pc.cast(arr, pa.string())
            if self._plain:  # no number or boolean text needs quoting in this dialect
                return text.fill_null(self.o.null)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            text = self._neutralised(arr.cast(pa.string()))
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            text = self._json_lists(arr)
        elif pa.types.is_struct(t) and t.num_fields == 0:
            text = pc.if_else(arr.is_valid(), pa.scalar("{}"), pa.scalar(None, pa.string()))
        else:
            raise Unsupported(f"no vectorised CSV text for {t}")
        return self._quoted(text).fill_null(self.o.null)

    def _floats(self, arr: pa.Array) -> pa.Array:
        text = pc.cast(arr, pa.string())
        size = pc.abs(arr)
        odd = pc.and_kleene(
            pc.not_equal(size, 0.0),
            pc.or_kleene(pc.less(size, _PLAIN_LOW), pc.greater_equal(size, _PLAIN_HIGH)),
        )
        odd = pc.or_kleene(odd, pc.is_nan(arr))
        if not _any(odd):
            return text
        mask = odd.fill_null(False)
        values = arr.filter(mask).to_pylist()
        return pc.replace_with_mask(text, mask, pa.array([float_text(v) for v in values]))

    def _neutralised(self, text: pa.Array) -> pa.Array:
        if not self.o.spreadsheet_safe:
            return text
        risky = pc.match_substring_regex(text, _TRIGGERS)
        if not _any(risky):
            return text
        return pc.if_else(risky, pc.binary_join_element_wise("'", text, ""), text)

    def _json_lists(self, arr: pa.Array) -> pa.Array:
        """Lists of scalars as compact JSON text (`["a","b"]`, `[1,null]`), as orjson
        writes them; strings with control characters go through orjson itself."""
        items = arr.values
        t = items.type
        if pa.types.is_null(t):
            texts = pa.array(["null"] * len(items), pa.string())
        elif pa.types.is_boolean(t) or _is_integer(t):
            texts = pc.cast(items, pa.string())
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            items = items.cast(pa.string())
            if _any(pc.match_substring_regex(items, _JSON_CONTROL)):
                return pa.array(
                    [None if v is None else orjson.dumps(v).decode() for v in arr.to_pylist()],
                    pa.string(),
                )
            escaped = pc.replace_substring(pc.replace_substring(items, "\\", "\\\\"), '"', '\\"')
            texts = pc.binary_join_element_wise('"', escaped, '"', "")
        else:
            raise Unsupported(f"no vectorised JSON text for {arr.type}")
        texts = texts.fill_null("null")
        lists = pa.ListArray.from_arrays(arr.offsets, texts, mask=arr.is_null())
        return pc.binary_join_element_wise("[", pc.binary_join(lists, ","), "]", "")

    def _quoted(self, text: pa.Array) -> pa.Array:
        """Quote the cells that hold the delimiter, the quote, CR or LF, or equal the null
        text (or `\\.` alone on a line)."""
        o = self.o
        need = pc.match_substring_regex(text, self._special)
        need = pc.or_kleene(need, pc.equal(text, o.null))
        if self.width == 1:
            need = pc.or_kleene(need, pc.equal(text, "\\."))
        need = need.fill_null(False)
        if not _any(need):
            return text
        quoted = pc.binary_join_element_wise(
            o.quote, pc.replace_substring(text, o.quote, self._qq), o.quote, ""
        )
        return pc.if_else(need, quoted, text)

    # ---- rows ------------------------------------------------------------------------

    def rows(self, columns: Sequence[pa.Array | None], count: int) -> bytes:
        """The CSV text of `count` rows given by their columns in header order (None: a
        column that is NULL in every row)."""
        if count == 0:
            return b""
        if len(columns) != self.width:
            raise ValueError("one column per header name")
        step = max(1, MAX_CELLS // max(self.width, 1))
        if count > step:
            return b"".join(
                self.rows(
                    [None if c is None else c.slice(i, step) for c in columns], min(step, count - i)
                )
                for i in range(0, count, step)
            )
        o = self.o
        if self._plain_rows:
            try:  # the cells are final: Arrow's writer joins them (3-4x faster) unless
                # one holds a quote, the delimiter or a line break (it refuses those)
                assert self._writer is not None
                return _written_rows(columns, count, self._writer)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        parts: list[pa.Array | pa.Scalar] = [pa.scalar(o.null) if c is None else c for c in columns]
        # the line ending goes on the last cell: fewer bytes to copy than on whole lines
        last = parts[-1]
        if isinstance(last, pa.Scalar):
            parts[-1] = pa.scalar(o.null + o.line_ending)
        else:
            parts[-1] = pc.binary_join_element_wise(last, o.line_ending, "")
        if all(isinstance(p, pa.Scalar) for p in parts):
            parts[0] = pa.array([parts[0].as_py()] * count, pa.string())
        line = pc.binary_join_element_wise(*parts, o.delimiter) if len(parts) > 1 else parts[0]
        return _text_bytes(line)


def _written_rows(
    columns: Sequence[pa.Array | None], count: int, options: pacsv.WriteOptions
) -> bytes:
    arrays = [pa.nulls(count, pa.string()) if c is None else c for c in columns]
    table = pa.Table.from_arrays(arrays, names=[str(i) for i in range(len(arrays))])
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, options)
    return bytes(sink.getvalue().to_pybytes())


def _writer_options(o: CsvOptions) -> pacsv.WriteOptions | None:
    """Arrow's CSV writer set to write finished cells as they are, where it can."""
    if len(o.delimiter) != 1 or not o.delimiter.isascii() or '"' in o.null:
        return None
    return pacsv.WriteOptions(
        include_header=False, delimiter=o.delimiter, eol=o.line_ending, null_string=o.null,
        quoting_style="none", batch_size=8192,
    )  # fmt: skip


def _text_bytes(arr: pa.Array) -> bytes:
    """The characters of a string array without nulls, concatenated (its data buffer)."""
    _, offsets, data = arr.buffers()
    bounds = pa.Array.from_buffers(pa.int32(), len(arr) + 1, [None, offsets], offset=arr.offset)
    first, last = bounds[0].as_py(), bounds[len(arr)].as_py()
    if data is None or last == first:
        return b""
    return bytes(data.slice(first, last - first).to_pybytes())
