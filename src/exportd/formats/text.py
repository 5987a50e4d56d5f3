"""CSV, TSV, JSON Lines and JSON: segments are byte streams (optionally gzip members or
zstd frames) that concatenate into the final file, around a header or brackets.

CSV quoting follows PostgreSQL's CSV writer, so the server's `COPY` can produce the same
bytes: a cell is quoted when it holds the delimiter, the quote character, CR or LF, or
when it equals the null string (so with the default empty null string, NULL is an empty
cell and an empty text is `""`); quote characters inside are doubled."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from exportd.errors import BadRequest
from exportd.formats import Column, Segment, Written, check_options
from exportd.formats.cells import (
    SPREADSHEET_TRIGGERS,
    Render,
    TimeOptions,
    decimal_text,
    float_text,
    neutralise,
    text_renderer,
)
from exportd.formats.compression import MEDIA_TYPES, SUFFIXES, compress, sink
from exportd.storage import Storage

_CODE = "INVALID_FORMAT_OPTIONS"
CSV_OPTIONS = (
    "delimiter", "quote", "header", "null", "line_ending", "bom", "spreadsheet_safe",
    "timezone", "datetime_format", "date_format",
)  # fmt: skip
JSON_OPTIONS = ("timezone", "datetime_format", "date_format")
LINE_ENDINGS = {"lf": "\n", "crlf": "\r\n", "\n": "\n", "\r\n": "\r\n"}
BOM = b"\xef\xbb\xbf"


def _char(options: dict[str, Any], key: str, default: str) -> str:
    value = options.get(key, default)
    if not isinstance(value, str) or len(value) != 1 or value in "\r\n":
        raise BadRequest(f"{key} must be one character other than CR or LF", _CODE)
    return value


def _flag(options: dict[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false", _CODE)
    return value


@dataclass(frozen=True)
class CsvOptions:
    """The CSV dialect of one export (validated at submit)."""

    delimiter: str = ","
    quote: str = '"'
    header: bool = True
    null: str = ""
    line_ending: str = "\n"
    bom: bool = False
    spreadsheet_safe: bool = True
    times: TimeOptions = field(default_factory=TimeOptions)

    @classmethod
    def parse(cls, options: dict[str, Any], delimiter: str) -> CsvOptions:
        check_options(options, CSV_OPTIONS, "csv")
        d, q = _char(options, "delimiter", delimiter), _char(options, "quote", '"')
        null = options.get("null", "")
        if (
            not isinstance(null, str)
            or len(null) > 100
            or any(c in null for c in (d, q, "\r", "\n"))
        ):
            raise BadRequest(
                "null must be a short text without the delimiter, quote, CR or LF", _CODE
            )
        if d == q:
            raise BadRequest("delimiter and quote must differ", _CODE)
        ending = LINE_ENDINGS.get(str(options.get("line_ending", "lf")).lower())
        if ending is None:
            raise BadRequest("line_ending must be 'lf' or 'crlf'", _CODE)
        return cls(
            d, q, _flag(options, "header", True), null, ending, _flag(options, "bom", False),
            _flag(options, "spreadsheet_safe", True), TimeOptions.parse(options),
        )  # fmt: skip


_PLAIN: tuple[Callable[..., str], ...] = (int.__repr__, float_text, decimal_text)
_PLAIN_CHARS = set("0123456789+-.eEaNIifnty")  # every character those renderings use


class CsvEncoder:
    """Renders rows to CSV text column by column (the rules are in the module docstring).

    A column's renderer is chosen from its first non-null value (a SQL column holds one
    type); a value of another type (SQLite allows that) falls back to the general rule,
    so a cell's text depends on its value alone (a text is neutralised in any column)."""

    def __init__(self, opts: CsvOptions, width: int) -> None:
        self.o = opts
        q = re.escape(opts.quote)
        self._special = re.compile(f"[{re.escape(opts.delimiter)}{q}\r\n]").search
        self._qq = opts.quote * 2
        self._renders: list[Render | bool | None] = [False] * width  # False: undecided
        self._single = width == 1
        plain_safe = not ({opts.delimiter, opts.quote} & _PLAIN_CHARS) and opts.null == ""
        self._plain_ok = plain_safe

    def quote(self, text: str) -> str:
        q = self.o.quote
        return q + text.replace(q, self._qq) + q

    def cell(self, text: str) -> str:
        """A rendered cell, quoted when it must be."""
        if self._special(text) or text == self.o.null or (self._single and text == "\\."):
            return self.quote(text)
        return text

    def text_cell(self, v: Any) -> str:
        if v is None:
            return self.o.null
        if v.__class__ is not str:
            v = _any_text(v, self.o.times)
        elif self.o.spreadsheet_safe and v.startswith(SPREADSHEET_TRIGGERS):
            v = "'" + v
        return self.cell(v)

    def _decide(self, i: int, col: Sequence[Any]) -> Render | bool | None:
        sample = next((v for v in col if v is not None), None)
        if sample is not None:
            self._renders[i] = text_renderer(sample, self.o.times)
        return self._renders[i]

    def column(self, i: int, col: Sequence[Any]) -> list[str]:
        render = self._renders[i]
        if render is False:
            render = self._decide(i, col)
        if render is None or render is False:
            return self._text_column(col)
        assert callable(render)
        null, cell = self.o.null, self.cell
        try:
            if render is float_text and self._plain_ok:
                return _float_column(col, null)
            if render in _PLAIN and self._plain_ok:
                return [null if v is None else render(v) for v in col]
            return [null if v is None else cell(render(v)) for v in col]
        except (TypeError, AttributeError, ValueError):  # a value of another type (SQLite)
            return [self.text_cell(v) for v in col]  # each value by its own type

    def _text_column(self, col: Sequence[Any]) -> list[str]:
        """A text column: when no cell needs quoting or neutralising (checked on the whole
        column at once, at C speed), the values pass as they are."""
        null = self.o.null
        try:
            probe = "\x00" + "\x00".join([v for v in col if v is not None])
        except TypeError:  # not all text (SQLite): cell by cell
            return [self.text_cell(v) for v in col]
        plain = (
            not self._special(probe)
            and not (self.o.spreadsheet_safe and _TRIGGER_AFTER_NUL.search(probe))
            and null not in col
            and not (self._single and "\\." in col)
        )
        if plain:
            return [null if v is None else v for v in col]
        return [self.text_cell(v) for v in col]

    def encode(self, rows: Sequence[Sequence[Any]]) -> str:
        if not rows:
            return ""
        cols = [self.column(i, col) for i, col in enumerate(zip(*rows, strict=True))]
        end = self.o.line_ending
        return end.join(map(self.o.delimiter.join, zip(*cols, strict=True))) + end

    def header(self, names: Sequence[str]) -> str:
        """The header line. Its names come from callers too (`as` renames, source column
        names, document keys), so they are neutralised like text cells. Every path (the
        generic writer and each fast path) takes its header from here."""
        if self.o.spreadsheet_safe:
            names = [neutralise(n) for n in names]
        return self.o.delimiter.join(self.cell(n) for n in names) + self.o.line_ending


_TRIGGER_AFTER_NUL = re.compile("\x00[" + re.escape("".join(SPREADSHEET_TRIGGERS)) + "]")


def _float_column(col: Sequence[Any], null: str) -> list[str]:
    """Floats as `float_text` renders them, vectorised for the common case."""
    texts = [null if v is None else float.__repr__(v) for v in col]
    texts = [t[:-2] if t.endswith(".0") else t for t in texts]
    if max(map(len, texts), default=0) >= 16 or any(t in ("inf", "-inf", "nan") for t in texts):
        return [null if v is None else float_text(v) for v in col]  # exponents, non-finite
    return texts


def _any_text(v: Any, times: TimeOptions) -> str:
    render = text_renderer(v, times)
    return v if render is None else render(v)


class TextRowWriter:
    """Writes encoded rows into a segment through its compressor. `lead` goes between two
    non-empty writes (JSON's comma), so sizes can be known before writing."""

    def __init__(
        self, out: BinaryIO, codec: str, encode: Callable[[Sequence[Sequence[Any]]], bytes],
        lead: bytes = b"",
    ) -> None:  # fmt: skip
        self._sink = sink(codec, out)
        self.encode = encode
        self._lead = lead
        self._started = False

    def encoded_size(self, data: bytes) -> int:
        return len(data) + (len(self._lead) if self._started and data else 0)

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        self.write_encoded(self.encode(rows))

    def write_encoded(self, data: bytes) -> None:
        if not data:
            return
        if self._started and self._lead:
            self._sink.write(self._lead)
        self._started = True
        self._sink.write(data)

    def close(self) -> None:
        self._sink.close()


class TextFormat:
    """What the text formats share: compression, the file's head and tail, assembly."""

    name = "text"
    base_extension = ".txt"
    base_media_type = "text/plain"

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.exact_bytes = codec == "none"
        self.extension = self.base_extension + SUFFIXES[codec]
        self.media_type = MEDIA_TYPES.get(codec, self.base_media_type)

    def part_writer(self, out: BinaryIO, columns: Sequence[Column]) -> TextRowWriter:
        raise NotImplementedError

    def head(self, columns: Sequence[Column]) -> bytes:
        return b""

    def tail(self) -> bytes:
        return b""

    def separator(self) -> bytes:
        return b""

    def file_size(self, columns: Sequence[Column], segment_sizes: Sequence[int]) -> int:
        sizes = [s for s in segment_sizes if s]
        sep = len(compress(self.codec, self.separator())) * max(len(sizes) - 1, 0)
        fixed = len(compress(self.codec, self.head(columns))) + len(
            compress(self.codec, self.tail())
        )
        return fixed + sep + sum(sizes)

    def assemble(
        self, storage: Storage, key: str, segments: Sequence[Segment], columns: Sequence[Column]
    ) -> Written:
        sep = compress(self.codec, self.separator())
        pieces: list[bytes | str] = [compress(self.codec, self.head(columns))]
        for i, seg in enumerate(s for s in segments if s.rows):
            if i and sep:
                pieces.append(sep)
            pieces.append(seg.key)
        pieces.append(compress(self.codec, self.tail()))
        done = storage.compose(key, [p for p in pieces if p != b""])
        return Written(done.bytes, done.sha256)


class CsvFormat(TextFormat):
    name = "csv"
    base_extension = ".csv"
    base_media_type = "text/csv"
    default_delimiter = ","

    def __init__(self, options: dict[str, Any], codec: str = "none") -> None:
        super().__init__(codec)
        self.options = CsvOptions.parse(options, self.default_delimiter)

    def part_writer(self, out: BinaryIO, columns: Sequence[Column]) -> TextRowWriter:
        enc = CsvEncoder(self.options, len(columns))
        return TextRowWriter(out, self.codec, lambda rows: enc.encode(rows).encode("utf-8"))

    def head(self, columns: Sequence[Column]) -> bytes:
        text = CsvEncoder(self.options, len(columns)).header([c.name for c in columns])
        bom = BOM if self.options.bom else b""
        return bom + (text.encode("utf-8") if self.options.header else b"")


class TsvFormat(CsvFormat):
    name = "tsv"
    base_extension = ".tsv"
    base_media_type = "text/tab-separated-values"
    default_delimiter = "\t"


class JsonRows:
    """Rows as JSON objects (orjson); times by the export's options, decimals as exact
    strings, binary as base64, NaN and infinities as null (JSON has no such numbers)."""

    def __init__(self, names: Sequence[str], times: TimeOptions) -> None:
        self.names = list(names)
        self.times = times
        self.option = orjson.OPT_PASSTHROUGH_DATETIME

    def default(self, value: Any) -> Any:
        render = text_renderer(value, self.times)
        if render is None or render is str:
            raise TypeError(f"cannot serialize {type(value).__name__}")
        return render(value)

    def document(self, doc: Any) -> bytes:
        return orjson.dumps(doc, default=self.default, option=self.option)

    def dumps(self, row: Sequence[Any]) -> bytes:
        return orjson.dumps(
            dict(zip(self.names, row, strict=True)), default=self.default, option=self.option
        )


class JsonLinesFormat(TextFormat):
    name = "jsonl"
    base_extension = ".jsonl"
    base_media_type = "application/x-ndjson"

    def __init__(self, options: dict[str, Any], codec: str = "none") -> None:
        super().__init__(codec)
        check_options(options, JSON_OPTIONS, self.name)
        self.times = TimeOptions.parse(options)

    def part_writer(self, out: BinaryIO, columns: Sequence[Column]) -> TextRowWriter:
        js = JsonRows([c.name for c in columns], self.times)
        return TextRowWriter(
            out, self.codec, lambda rows: b"".join(js.dumps(r) + b"\n" for r in rows)
        )

    def document_writer(self, out: BinaryIO) -> TextRowWriter:
        """Documents as they are, one per line (rows are `(document,)`)."""
        js = JsonRows([], self.times)
        return TextRowWriter(
            out, self.codec, lambda rows: b"".join(js.document(r[0]) + b"\n" for r in rows)
        )


class JsonArrayFormat(JsonLinesFormat):
    """One JSON array: `[` + segments joined by `,` + `]`; a segment holds its rows joined
    by `,\\n`, and empty segments are left out, so the file is valid JSON in every case."""

    name = "json"
    base_extension = ".json"
    base_media_type = "application/json"

    def part_writer(self, out: BinaryIO, columns: Sequence[Column]) -> TextRowWriter:
        js = JsonRows([c.name for c in columns], self.times)
        return TextRowWriter(
            out, self.codec, lambda rows: b",\n".join(js.dumps(r) for r in rows), b",\n"
        )

    def document_writer(self, out: BinaryIO) -> TextRowWriter:
        js = JsonRows([], self.times)
        return TextRowWriter(
            out, self.codec, lambda rows: b",\n".join(js.document(r[0]) for r in rows), b",\n"
        )

    def head(self, columns: Sequence[Column]) -> bytes:
        return b"[\n"

    def separator(self) -> bytes:
        return b",\n"

    def tail(self) -> bytes:
        return b"\n]\n"


def text_format(name: str, options: dict[str, Any], codec: str) -> TextFormat:
    if name == "csv":
        return CsvFormat(options, codec)
    if name == "tsv":
        return TsvFormat(options, codec)
    if name == "jsonl":
        return JsonLinesFormat(options, codec)
    return JsonArrayFormat(options, codec)
