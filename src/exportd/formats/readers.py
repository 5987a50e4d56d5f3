"""Reading input files for imports: records with their line numbers and original text,
and the split of a file into partitions that each start on a record boundary.

Text files (CSV, TSV, JSON Lines) are split by byte ranges at record boundaries: a CSV
record is one physical line unless its quotes are unbalanced, in which case the lines
that follow are joined until they balance and the whole parses as one record of the
header's width (a quoted newline). A line whose quote never closes that way is a broken
record of its own: it is rejected alone and reading goes on at the next line, so one bad
quote never swallows the rows after it. Planning and reading walk the file with the same
rules, so a range that starts on a boundary reads exactly the records planned for it.
Parquet files split by row groups. Compressed files (gzip, zstd) are read as one
partition (a compressed stream cannot be entered in the middle)."""

from __future__ import annotations

import csv
import functools
import gzip
import io
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar, cast

T = TypeVar("T")
READ_CHUNK = 1 << 20
MAX_JOINED_LINES = 200  # a quoted field may hold this many newlines
MAX_RECORD_BYTES = 1 << 24


@dataclass(frozen=True)
class ReadOptions:
    """How to read a file: its format and, for the delimited ones, their dialect."""

    format: str  # csv | tsv | jsonl | json | parquet
    compression: str = "none"
    header: bool = True
    delimiter: str = ","
    quote: str = '"'

    @property
    def delimited(self) -> bool:
        return self.format in ("csv", "tsv")

    @property
    def splittable(self) -> bool:
        return self.compression == "none" and self.format in ("csv", "tsv", "jsonl")

    @property
    def binary(self) -> bool:
        return self.format in ("parquet", "xlsx")

    @property
    def sep(self) -> str:
        return "\t" if self.format == "tsv" and self.delimiter == "," else self.delimiter


@dataclass
class Record:
    """One record of the file: where it starts (1-based line, or row for Parquet), its
    original text, and its values by file column (None when it could not be parsed)."""

    line: int
    raw: str
    values: dict[str, Any] | None
    error: str | None = None
    fields: list[str] | None = None  # a delimited record's fields, in the header's order


@dataclass
class FilePlan:
    """A file's split: byte ranges (or row groups), the header, the number of records."""

    ranges: list[dict[str, Any]]
    columns: list[str]
    records: int
    extra: dict[str, Any] = field(default_factory=dict)


class ReadError(ValueError):
    """The file cannot be read at all (not a line of it: the whole)."""


def open_binary(path: Path, compression: str) -> BinaryIO:
    raw = path.open("rb")
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return raw


# ---- physical lines and delimited records ---------------------------------------------


def _lines(stream: IO[bytes], start: int, end: int | None) -> Iterator[tuple[int, bytes]]:
    """(offset, line with its newline) from `start` up to (not including) `end`."""
    pos = start
    for line in _split_lines(stream):
        if end is not None and pos >= end:
            return
        yield pos, line
        pos += len(line)


def _split_lines(stream: IO[bytes]) -> Iterator[bytes]:
    if isinstance(stream, io.BufferedReader):
        yield from stream
        return
    rest = b""
    while chunk := stream.read(READ_CHUNK):
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


def _decode(data: bytes) -> str:
    text = data.decode("utf-8")
    return text.rstrip("\r\n")


def _parse_delimited(text: str, opts: ReadOptions) -> list[str] | None:
    rows = list(
        csv.reader(
            io.StringIO(text, newline=""), delimiter=opts.sep, quotechar=opts.quote, strict=True
        )
    )
    return rows[0] if len(rows) == 1 else None


def _strict_parse(text: str, opts: ReadOptions) -> list[str] | None:
    try:
        return _parse_delimited(text, opts)
    except csv.Error:
        return None


def delimited_records(
    lines: Iterable[tuple[int, bytes]], first_line: int, opts: ReadOptions, width: int | None
) -> Iterator[tuple[int, int, str, list[str] | None]]:
    """(offset, line number, original text, fields or None) of each record (see the
    module's docstring for quoted newlines and broken quotes). Blank lines are skipped."""
    q = opts.quote.encode()
    source = iter(lines)
    back: deque[tuple[int, int, bytes]] = deque()
    number = first_line

    def take() -> tuple[int, int, bytes] | None:
        nonlocal number
        if back:
            return back.popleft()
        got = next(source, None)
        if got is None:
            return None
        number += 1
        return got[0], number - 1, got[1]

    while (head := take()) is not None:
        offset, line_no, data = head
        if not data.strip(b"\r\n"):
            continue
        quotes = data.count(q)
        if quotes == 0:  # the common line: no quoting, split as it is
            text = _decode_safe(data)
            fields = text.split(opts.sep) if text is not None else None
            yield offset, line_no, text or data.decode("utf-8", "replace").rstrip("\r\n"), fields
            continue
        if quotes % 2 == 0:
            text = _decode_safe(data)
            fields = _strict_parse(text, opts) if text is not None else None
            yield offset, line_no, text or data.decode("utf-8", "replace").rstrip("\r\n"), fields
            continue
        joined = [head]
        quotes = data.count(q)
        size = len(data)
        closed = False
        while len(joined) < MAX_JOINED_LINES and size < MAX_RECORD_BYTES:
            nxt = take()
            if nxt is None:
                break
            joined.append(nxt)
            quotes += nxt[2].count(q)
            size += len(nxt[2])
            if quotes % 2 == 0:
                closed = True
                break
        if closed:
            text = _decode_safe(b"".join(j[2] for j in joined))
            fields = _strict_parse(text, opts) if text is not None else None
            if fields is not None and (width is None or len(fields) == width):
                yield offset, line_no, text or "", fields
                continue
        back.extendleft(reversed(joined[1:]))  # read again after the broken line
        yield offset, line_no, data.decode("utf-8", "replace").rstrip("\r\n"), None


def _decode_safe(data: bytes) -> str | None:
    try:
        return _decode(data)
    except UnicodeDecodeError:
        return None


# ---- planning -------------------------------------------------------------------------


def _header(path: Path, opts: ReadOptions) -> tuple[list[str], int, int]:
    """The file's columns, the offset after the header and the first data line number."""
    if opts.format in ("jsonl", "json"):
        return [], 0, 1
    if opts.format == "xlsx":
        return _xlsx_header(path, opts), 0, 2 if opts.header else 1
    with open_binary(path, opts.compression) as raw:
        first = next(_split_lines(raw), b"")
    bom = 3 if first.startswith(b"\xef\xbb\xbf") else 0
    text = first[bom:].decode("utf-8", "replace").rstrip("\r\n")
    fields = _strict_parse(text, opts)
    if fields is None:
        raise ReadError("the first line of the file cannot be read as CSV")
    if not opts.header:
        return [f"#{i}" for i in range(len(fields))], bom, 1
    if len(set(fields)) != len(fields) or not all(fields):
        raise ReadError("the header line has empty or repeated column names")
    return fields, len(first), 2


def plan_file(
    path: Path, opts: ReadOptions, parts: int, block_bytes: int | None = None,
    first_bytes: int | None = None,
) -> FilePlan:  # fmt: skip
    """Split a file into at most `parts` ranges that start on record boundaries, and
    count its records (stage 10). The ranges are of even size; with `first_bytes`, the
    first ones grow from that size to the even size of the rest (`_cut_goals`): a streamed
    publish's first COPY starts once the first range is loaded, and each next range is
    loaded while the ones before it are COPYed."""
    if opts.format == "parquet":
        return _plan_parquet(path, parts)
    columns, start, first_line = _header(path, opts)
    if not opts.splittable:
        n = sum(
            1 for _ in read_records(path, opts, {"start": start, "first_line": first_line}, columns)
        )
        return FilePlan([{"start": start, "end": None, "first_line": first_line}], columns, n)
    size = path.stat().st_size
    goal = _cut_goals(start, size, parts, first_bytes)
    cuts: list[dict[str, Any]] = [{"start": start, "first_line": first_line}]
    records = 0
    with path.open("rb") as f:
        f.seek(start)
        width = len(columns) if opts.delimited else None
        pos: int | None = start
        line = first_line
        if opts.delimited and len(opts.sep) == 1:
            pos, line, records = _plan_chunks(
                f, start, first_line, opts, width, cuts, goal, parts, block_bytes or BLOCK_BYTES
            )
        if pos is not None:  # from a chunk a record may cross: the walker to the end
            f.seek(pos)
            for offset, line_no, _text, _fields in _records_of(
                _lines(f, pos, None), line, opts, width
            ):
                if offset >= goal(len(cuts)) and len(cuts) < parts:
                    cuts.append({"start": offset, "first_line": line_no})
                records += 1
    for a, b in itertools.pairwise(cuts):
        a["end"] = b["start"]
    cuts[-1]["end"] = None
    return FilePlan(cuts, columns, records)


def _cut_goals(start: int, size: int, parts: int, first: int | None) -> Callable[[int], int]:
    """Where the k-th range (k >= 1) should start (its cut: the first record start at or
    after it): even ranges; with `first`, a ramp before them of `first`, twice that, and
    so on while a ramp range is at most half the even size of what is left (so the even
    ones are at most 4x the ramp's last). Even ranges only when the ramp would take all
    but one range (too few ranges: the last would be most of the file)."""
    parts = max(parts, 1)
    left = size - start
    starts = [start]
    grow = first or 0
    while grow and len(starts) < parts - 1 and 2 * grow <= (left - grow) // (parts - len(starts)):
        starts.append(starts[-1] + grow)
        left -= grow
        grow *= 2
    if len(starts) >= parts - 1 and len(starts) > 1:  # the ramp was cut short
        starts, left = [start], size - start
    ramp = len(starts) - 1
    step = max(left // (parts - ramp), 1)
    return lambda k: starts[k] if k <= ramp else starts[ramp] + (k - ramp) * step


def _plan_chunks(
    f: io.BufferedIOBase, start: int, line: int, opts: ReadOptions, width: int | None,
    cuts: list[dict[str, Any]], goal: Callable[[int], int], parts: int, block_bytes: int,
) -> tuple[int | None, int, int]:  # fmt: skip
    """Planning's walk in chunks (the rules of `delimited_blocks`): a chunk of one record
    per line is counted and cut by its newlines (the k-th cut at the first line start at
    or after `goal(k)`), one whose lines all balance their quotes by the walker on it
    alone; at a chunk where a record may cross the chunk's end, stop: (where the walker
    must go on, or None at the end; its line number; records so far)."""
    q = opts.quote.encode()
    records = 0
    for pos, chunk, _last in line_chunks(f, start, None, block_bytes):
        newlines, plain = _scan(chunk, q)
        n_lines = newlines + (0 if chunk[-1] == 0x0A else 1)
        if not plain and _quotes_unbalanced(bytes(chunk), q):
            return pos, line, records
        if plain:
            buf, size = cast(bytearray, chunk.obj), len(chunk)  # (a view of its start)
            while len(cuts) < parts:
                at = goal(len(cuts)) - pos  # the first line start at or after it
                if at >= size:
                    break
                begin = 0 if at <= 0 else buf.find(b"\n", at - 1, size) + 1
                if (begin <= 0 and at > 0) or begin >= size:
                    break
                cuts.append({"start": pos + begin, "first_line": line + buf.count(b"\n", 0, begin)})
            records += n_lines
        else:
            for offset, line_no, _t, _f in delimited_records(
                _chunk_lines(bytes(chunk), pos), line, opts, width
            ):
                if offset >= goal(len(cuts)) and len(cuts) < parts:
                    cuts.append({"start": offset, "first_line": line_no})
                records += 1
        line += n_lines
    return None, line, records


def line_chunks(
    f: io.BufferedIOBase, start: int, stop: int | None, block_bytes: int
) -> Iterator[tuple[int, memoryview, bool]]:
    """The bytes of `f` from `start` (its position) to `stop` (None: the end) in chunks
    of about `block_bytes` that end at a newline (the last one: where the bytes end), as
    (offset, chunk, last). The chunks are views of one buffer refilled in place (no copy
    nor fresh pages per chunk): each is valid until the next one is asked for."""
    buf = bytearray(block_bytes)
    offset = read_to = start  # the file offsets of buf[0] and of the next read
    have = 0  # the bytes in buf of a line not ended yet
    while True:
        want = block_bytes if stop is None else max(min(block_bytes, stop - read_to), 0)
        if have + want > len(buf):  # a line longer than a block: a larger buffer
            grown = bytearray(have + want)  # (not resized: a view of it may still live)
            grown[:have] = memoryview(buf)[:have]
            buf = grown
        n = f.readinto(memoryview(buf)[have : have + want]) if want else 0
        read_to += n
        end = have + n
        if not end:
            return
        last = not n
        cut = end if last else buf.rfind(b"\n", 0, end) + 1
        if not cut:  # no newline yet: read on
            have = end
            continue
        yield offset, memoryview(buf)[:cut], last
        if last:
            return
        have = end - cut
        buf[:have] = memoryview(buf)[cut:end]  # (same size: no resize)
        offset += cut


def _records_of(
    lines: Iterable[tuple[int, bytes]], first_line: int, opts: ReadOptions, width: int | None
) -> Iterator[tuple[int, int, str, Any]]:
    if opts.delimited:
        yield from delimited_records(lines, first_line, opts, width)
        return
    number = first_line
    for offset, data in lines:
        number += 1
        if data.strip():
            yield offset, number - 1, data.decode("utf-8", "replace").rstrip("\r\n"), None


def _plan_parquet(path: Path, parts: int) -> FilePlan:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:
        raise ReadError(f"not a Parquet file ({type(exc).__name__})") from None
    groups = meta.num_row_groups
    columns = [meta.schema.column(i).name for i in range(meta.num_columns)]
    per = max(-(-groups // max(parts, 1)), 1)
    ranges, first = [], 1
    for g in range(0, groups, per):
        rows = sum(meta.row_group(i).num_rows for i in range(g, min(g + per, groups)))
        ranges.append({"row_groups": list(range(g, min(g + per, groups))), "first_line": first})
        first += rows
    return FilePlan(ranges or [{"row_groups": [], "first_line": 1}], columns, meta.num_rows)


# ---- reading one partition ------------------------------------------------------------


def read_records(
    path: Path, opts: ReadOptions, bounds: dict[str, Any], columns: list[str]
) -> Iterator[Record]:
    """The records of one partition, in file order."""
    if opts.format == "parquet":
        yield from _parquet_records(path, bounds, columns)
        return
    if opts.format == "json":
        yield from _json_array_records(path, opts)
        return
    if opts.format == "xlsx":
        yield from _xlsx_records(path, opts, columns)
        return
    start, end = int(bounds.get("start") or 0), bounds.get("end")
    with open_binary(path, opts.compression) as raw:
        if opts.compression == "none":
            raw.seek(start)
        else:
            _skip(raw, start)
        width = len(columns) if opts.delimited else None
        lines = _lines(raw, start, None if end is None else int(end))
        for _offset, line_no, text, fields in _records_of(
            lines, int(bounds["first_line"]), opts, width
        ):
            yield _record(line_no, text, fields, columns, opts)


def _skip(raw: IO[bytes], n: int) -> None:
    while n > 0:
        got = raw.read(min(n, READ_CHUNK))
        if not got:
            return
        n -= len(got)


def _record(line: int, text: str, fields: Any, columns: list[str], opts: ReadOptions) -> Record:
    if opts.format == "jsonl":
        try:
            value = json.loads(text)
        except ValueError as exc:
            return Record(line, text, None, f"not valid JSON: {exc}")
        if not isinstance(value, dict):
            return Record(line, text, None, "a JSON Lines record must be an object")
        return Record(line, text, value)
    if fields is None:
        return Record(line, text, None, "broken quoting: the quoted field does not close")
    if len(fields) != len(columns):
        return Record(line, text, None, f"has {len(fields)} fields, the header {len(columns)}")
    return Record(line, text, None, None, fields)


def _parquet_records(path: Path, bounds: dict[str, Any], columns: list[str]) -> Iterator[Record]:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    row = int(bounds["first_line"])
    for g in bounds.get("row_groups", []):
        for batch in f.iter_batches(batch_size=5000, row_groups=[g]):
            for value in batch.to_pylist():
                yield Record(row, json.dumps(value, default=str), value)
                row += 1


def _json_array_records(path: Path, opts: ReadOptions) -> Iterator[Record]:
    """A JSON array of objects (read whole: JSON arrays are for small files)."""
    with open_binary(path, opts.compression) as raw:
        try:
            data = json.load(raw)
        except ValueError as exc:
            raise ReadError(f"not a JSON array: {exc}") from None
    if not isinstance(data, list):
        raise ReadError("a JSON file to import must hold an array of objects")
    for i, value in enumerate(data, start=1):
        text = json.dumps(value, default=str)
        if not isinstance(value, dict):
            yield Record(i, text, None, "an element of the array must be an object")
        else:
            yield Record(i, text, value)


def _xlsx_rows(path: Path) -> Iterator[tuple[Any, ...]]:
    """The first sheet's rows (read-only, streamed)."""
    from openpyxl import load_workbook

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:
        raise ReadError(f"not an XLSX workbook ({type(exc).__name__})") from None
    try:
        yield from book.worksheets[0].iter_rows(values_only=True)
    finally:
        book.close()


def _xlsx_header(path: Path, opts: ReadOptions) -> list[str]:
    first = next(_xlsx_rows(path), None)
    if first is None:
        return []
    if not opts.header:
        return [f"#{i}" for i in range(len(first))]
    names = ["" if v is None else str(v) for v in first]
    if len(set(names)) != len(names) or not all(names):
        raise ReadError("the header row has empty or repeated column names")
    return names


def _xlsx_records(path: Path, opts: ReadOptions, columns: list[str]) -> Iterator[Record]:
    """Each row of the first sheet; `line` is the sheet's row number."""
    rows = _xlsx_rows(path)
    if opts.header:
        next(rows, None)
    for number, row in enumerate(rows, start=2 if opts.header else 1):
        if all(v is None for v in row):
            continue
        text = json.dumps(list(row), default=str)
        values = list(row) + [None] * (len(columns) - len(row))
        if len(values) > len(columns) and any(v is not None for v in values[len(columns) :]):
            yield Record(number, text, None, f"has {len(row)} cells, the header {len(columns)}")
            continue
        yield Record(number, text, dict(zip(columns, values, strict=False)))


# ---- a partition's delimited records in blocks of columns (the fast path) -------------

BLOCK_BYTES = 4 << 20


@dataclass
class Block:
    """A run of a partition's delimited records as columns: `columns` holds each file
    column's fields as text (Arrow string arrays, in the header's order) for the records
    that parsed, `lines` their line numbers; `rejected` the records that did not parse
    (broken quoting, a wrong number of fields, bad UTF-8) with their reason; `raw(i)` the
    original text of the i-th parsed record (for the error report)."""

    columns: list[Any]  # pa.StringArray per file column
    lines: Any  # pa.Int64Array
    rejected: list[Record]
    raw: Any  # Callable[[int], str]
    parsed_by: str  # "arrow" | "walker"

    @property
    def rows(self) -> int:
        return len(self.lines)


def delimited_blocks(
    path: Path, opts: ReadOptions, bounds: dict[str, Any], columns: list[str],
    block_bytes: int = BLOCK_BYTES, plain: Callable[[memoryview, int], T | None] | None = None,
) -> Iterator[Block | T]:  # fmt: skip
    """The records of one partition of an uncompressed CSV/TSV file, in file order, as
    blocks of columns: exactly the records (same fields, same line numbers, same rejects)
    `read_records` gives, read faster where that can be proven safe.

    The partition is read in chunks cut at newlines. A chunk without the quote character,
    blank lines or a lone carriage return has one record per physical line: it is parsed
    by `pyarrow.csv` (quoting off), and its line numbers follow from its first line. Any
    other chunk, or one Arrow refuses (a wrong number of fields, invalid UTF-8), is read
    by the record walker (`delimited_records`, the rules of the module's docstring):
    the chunk alone when every line of it has balanced quotes (no record can cross its
    end), else everything from the chunk to the partition's end (a quoted newline may).

    `plain(chunk, first line)`, when given, is offered each chunk of one record per line
    first (the fields split at the separator, a CRLF's CR not in the last field): what it
    returns is yielded instead of the chunk's Block; None lets the chunk go the Arrow way.
    The chunk is a view of the reader's buffer, valid until the next block is asked for:
    what is yielded must not keep it beyond."""
    import pyarrow as pa

    start, end = int(bounds.get("start") or 0), bounds.get("end")
    stop = None if end is None else int(end)
    line = int(bounds["first_line"])
    q = opts.quote.encode()
    width = len(columns)
    with path.open("rb") as f:
        f.seek(start)
        for offset, chunk, last in line_chunks(f, start, stop, block_bytes):
            newlines, plain_chunk = _scan(chunk, q)
            n_lines = newlines + (0 if chunk[-1] == 0x0A else 1)
            raw = None if plain_chunk else bytes(chunk)  # (for the walker: bytes' methods)
            if raw is not None and _quotes_unbalanced(raw, q):
                f.seek(offset)  # a record may cross the chunk's end: walk to the end
                yield from _walked_blocks(
                    _lines(f, offset, stop), line, opts, columns, max(block_bytes // 64, 1000)
                )
                return
            block: Block | T | None = None
            if plain_chunk and len(opts.sep) == 1:
                if plain is not None:
                    block = plain(chunk, line)
                if block is None:
                    block = _arrow_block(bytes(chunk), line, n_lines, opts, width, pa)
            if block is None:
                lines = _chunk_lines(raw or bytes(chunk), offset)
                block = next(_walked_blocks(lines, line, opts, columns, n_lines + 1), None)
            if block is not None:
                yield block
            line += n_lines
            if last:
                return


def _scan(chunk: bytes | memoryview, q: bytes) -> tuple[int, bool]:
    """(the chunk's LF count, whether it holds no quote and one record per line): in C
    where the module was built (`_importcsv.scan`, one pass), else by bytes' methods."""
    native = _native_scan()
    if native is not None:
        return native(chunk, q)
    chunk = bytes(chunk)
    return chunk.count(b"\n"), (not q or q not in chunk) and _one_record_per_line(chunk)


@functools.cache
def _native_scan() -> Callable[[bytes | memoryview, bytes], tuple[int, bool]] | None:
    try:
        from exportd.fastpaths._importcsv import scan
    except ImportError:
        return None
    return scan


def _quotes_unbalanced(chunk: bytes, q: bytes) -> bool:
    """A line of the chunk holds an odd number of quotes: a record may cross its end."""
    return bool(q) and q in chunk and any(ln.count(q) % 2 for ln in chunk.split(b"\n"))


def _one_record_per_line(chunk: bytes) -> bool:
    if b"\r" not in chunk:  # the common LF file: one search instead of four
        return not chunk.startswith(b"\n") and b"\n\n" not in chunk
    blank = chunk.startswith((b"\n", b"\r\n")) or b"\n\n" in chunk or b"\n\r\n" in chunk
    return not blank and chunk.count(b"\r") == chunk.count(b"\r\n")


def _chunk_lines(chunk: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    pos = offset
    for ln in _nl_lines(chunk):
        yield pos, ln
        pos += len(ln)


def _nl_lines(chunk: bytes) -> list[bytes]:
    parts = chunk.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _arrow_block(
    chunk: bytes, line: int, n_lines: int, opts: ReadOptions, width: int, pa: Any
) -> Block | None:
    """A chunk of one record per line parsed by Arrow; None when Arrow refuses it."""
    import pyarrow.csv as pacsv

    names = [f"c{i}" for i in range(width)]
    try:
        table = pacsv.read_csv(
            io.BytesIO(chunk),
            read_options=pacsv.ReadOptions(
                column_names=names, use_threads=False, block_size=len(chunk) + 1
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=opts.sep,
                quote_char=False,
                newlines_in_values=False,
                ignore_empty_lines=False,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                null_values=[],
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    if table.num_rows != n_lines:
        return None
    cols = [table.column(i).combine_chunks() for i in range(width)]
    lines = pa.array(range(line, line + n_lines), pa.int64())
    texts: list[str] | None = None

    def raw(i: int) -> str:
        nonlocal texts
        if texts is None:
            texts = [t.rstrip("\r") for t in chunk.decode("utf-8", "replace").split("\n")]
        return texts[i]

    return Block(cols, lines, [], raw, "arrow")


def _walked_blocks(
    lines: Iterable[tuple[int, bytes]], first_line: int, opts: ReadOptions, columns: list[str],
    per_block: int,
) -> Iterator[Block]:  # fmt: skip
    import pyarrow as pa

    width = len(columns)
    good: list[list[str]] = []
    numbers: list[int] = []
    texts: list[str] = []
    bad: list[Record] = []

    def block() -> Block:
        cols = (
            [pa.array(c, pa.string()) for c in zip(*good, strict=True)]
            if good
            else [pa.array([], pa.string()) for _ in range(width)]
        )
        kept = list(texts)
        return Block(cols, pa.array(numbers, pa.int64()), list(bad), kept.__getitem__, "walker")

    for _offset, line_no, text, fields in delimited_records(lines, first_line, opts, width):
        rec = _record(line_no, text, fields, columns, opts)
        if rec.fields is None:
            bad.append(rec)
        else:
            good.append(rec.fields)
            numbers.append(line_no)
            texts.append(text)
        if len(good) + len(bad) >= per_block:
            yield block()
            good, numbers, texts, bad = [], [], [], []
    if good or bad:
        yield block()
