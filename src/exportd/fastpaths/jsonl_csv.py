"""JSON Lines documents in C (yyjson) or through Arrow (pyarrow.json, in C++) for a CSV/TSV
export with the merged header, byte-identical to the Python path (`Flattener` and the
generic CSV writer).

Each chunk is first read by the C reader (`_jsoncells`, src/native/jsoncells.c): it parses
every line, flattens it and renders its cells by the Python path's rules in one pass,
without the GIL; a chunk it cannot give exactly (its docstring says which) comes back
None and is read the ways below, which also give the Python path's errors.

The header pass reads the partition in chunks of whole lines (about CHUNK_BYTES): each
chunk's inferred schema gives its paths (Arrow adds an object's keys in order of first
appearance: tree order), and its cells are rendered at once by `ArrowCsv` and kept in the
storage, under the task's parts prefix (`CellCache`). The export pass then only joins
each chunk's cells in the merged header's order: the documents are read once.

A chunk that Arrow cannot give exactly as the Python path would goes through the Python
path (its paths by `Flattener`, its cells by the generic CSV encoder, which renders each
value by its own type, so cells do not depend on the rows around them):

- Arrow refuses it: a key whose type changes (a scalar in one document, an object or
  text in another), a document that is not an object, a key given twice, bad
  surrogates, or a line holding more than one document;
- not valid UTF-8 (Arrow would replace bytes that orjson refuses);
- a key holding an object with keys somewhere and JSON `null` or `{}` elsewhere (the
  Python path gives that key a column of its own; Arrow cannot tell them from a missing
  key or from an object of nulls);
- a float column holding an integral value of 2**53 or more, or -0 (integers and floats
  share a float64 column in Arrow), arrays of floats or of objects (their JSON text).

Strings that Arrow infers as timestamps are read again as text.

A key whose type changes within a chunk (an integer in most documents, text in a few)
does not send the whole chunk to Python: the lines holding the rarer kind of value at
that key (found in the raw text, then parsed) take the Python path, the others are read
by Arrow, and each column's cells are put back in line order (`_mixed`). This holds only
when it gives the Python path's result exactly: the lines taken out must bring no path
Arrow did not see, and each of their paths must have appeared before them (so that the
order of first appearance is Arrow's). A line taken out that brings a path first splits
the chunk around it (the merged header and the cells do not depend on where chunks end):
the lines before and after it are read as chunks of their own, the line alone takes the
Python path (up to MAX_RARE_SPLITS lines per chunk; beyond, the chunk takes it whole).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from exportd.documents.flatten import (
    MAX_COLUMNS,
    Flattener,
    check_width,
    escape_key,
    merge_headers,
)
from exportd.errors import SourceError
from exportd.formats.arrow_csv import ArrowCsv, Unsupported
from exportd.formats.text import CsvEncoder, CsvOptions
from exportd.storage import Storage

CHUNK_BYTES = 4 << 20
SAMPLE_BYTES = 256 << 10
BLOCK_BYTES = 4 << 20
_INT_LIMIT = float(2**53)
_KEY_NULL = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*null')
_KEY_EMPTY = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*\{\s*\}')
_EMPTY_OBJECT = re.compile(rb"\{\s*\}")
_BLANK_LINE = re.compile(rb"^[ \t\r\x0b\x0c]*$", re.MULTILINE)


class NotExact(Exception):
    """This chunk must take the Python path."""


class RareLineFirst(NotExact):
    """A line taken out of Arrow's read brings a path first (or alone): the chunk is
    split around it (`_chunk_results`); `line` is its number in the chunk."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def line_chunks(
    path: str, start: int, end: int, size: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """(offset, chunk) of the lines that start in [start, end) of a file (as
    `paths.read_lines` gives them), in chunks of whole lines of about `size` bytes."""
    size = size or CHUNK_BYTES
    try:
        with open(path, "rb") as fh:
            if start > 0:
                fh.seek(start - 1)
                fh.readline()  # a line begun before `start` belongs to the previous segment
            pos = fh.tell()
            carry = b""
            while pos - len(carry) < end:  # the next line starts in the range
                block = fh.read(size)
                data = carry + block
                base = pos - len(carry)
                if not block:  # end of file
                    if data:
                        yield base, data
                    return
                stop = data.find(b"\n", max(end - 1 - base, 0))
                if stop >= 0 and base + stop + 1 >= end:  # the last line of the range ends here
                    yield base, data[: stop + 1]
                    return
                cut = data.rfind(b"\n") + 1
                if cut:
                    yield base, data[:cut]
                carry = data[cut:]
                pos += len(block)
    except OSError as exc:
        raise SourceError(
            f"cannot read {Path(path).name}: {exc.strerror}", "SOURCE_UNAVAILABLE"
        ) from None


def documents_of(chunk: bytes, name: str, offset: int) -> list[Any]:
    """The documents of a chunk (at `offset` in file `name`) as the Python path reads
    them: blank lines skipped, anything else that is not JSON an INVALID_DOCUMENT."""
    from exportd.sources.documents import load_document

    loads, docs, pos = orjson.loads, [], offset
    for line in chunk.split(b"\n"):
        try:
            docs.append(loads(line))
        except orjson.JSONDecodeError:
            if line.strip():
                load_document(line, f"{name} at byte {pos}")
        pos += len(line) + 1
    return docs


# ---- schemas -------------------------------------------------------------------------


def _as_text(t: pa.DataType) -> pa.DataType:
    """The type to read with: inferred timestamps and dates are read back as strings."""
    if pa.types.is_temporal(t):
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_as_text(f.type)) for f in t])
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_as_text(t.value_type)))
    return t


def _object_keys(t: pa.DataType | pa.Schema, out: set[bytes]) -> None:
    """The names (JSON-encoded) of keys holding an object with keys, at any depth."""
    for f in t:
        if pa.types.is_struct(f.type):
            if f.type.num_fields:
                out.add(f.name.encode())
            _object_keys(f.type, out)
        elif pa.types.is_list(f.type) and pa.types.is_struct(f.type.value_type):
            _object_keys(f.type.value_type, out)


def _key_names(pattern: re.Pattern[bytes], chunk: bytes) -> set[bytes]:
    names = set()
    for m in pattern.finditer(chunk):
        raw = m.group(1)
        if b"\\" in raw:
            try:
                raw = orjson.loads(b'"' + raw + b'"').encode()
            except (orjson.JSONDecodeError, UnicodeEncodeError):
                raise NotExact("a key that does not decode") from None
        names.add(raw)
    return names


def _check_bytes(chunk: bytes, schema: pa.Schema) -> None:
    """What Arrow reads differently from orjson, looked for in the raw text."""
    if not chunk.isascii():
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            raise NotExact("not UTF-8") from None
    objects: set[bytes] = set()
    _object_keys(schema, objects)
    if not objects:
        return
    if b"null" in chunk and _key_names(_KEY_NULL, chunk) & objects:
        raise NotExact("null where an object is elsewhere")
    if _EMPTY_OBJECT.search(chunk) and _key_names(_KEY_EMPTY, chunk) & objects:
        raise NotExact("{} where an object with keys is elsewhere")


def _check_rows(chunk: bytes, rows: int) -> None:
    """One document per line that is not blank (Arrow also reads `{...} {...}`)."""
    lines = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
    if rows != lines:
        blank = len(_BLANK_LINE.findall(chunk)) - (1 if chunk.endswith(b"\n") else 0)
        if rows != lines - blank:
            raise NotExact("lines holding more than one document")


_CONFLICT = re.compile(r"Column\((/[^()]*)\) changed from (\w+) to (\w+)")
_KIND_START = {
    "string": rb'"',
    "number": rb"[-0-9]",
    "boolean": rb"[tf]",
    "null": rb"n",
    "object": rb"\{",
    "array": rb"\[",
}
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\- .:@$#]+")
MAX_SPLITS = 8


def _conflict_lines(message: str, chunk: bytes, starts: list[int], taken: set[int]) -> set[int]:
    """For Arrow's "Column(/a/b) changed from K1 to K2": the lines (by number; `starts`
    are their offsets in `chunk`) not yet taken whose text holds key `b` with a value of
    the rarer of the two kinds (a superset of the documents holding it at `/a/b`: all that
    matters is that they leave Arrow)."""
    m = _CONFLICT.search(message)
    if not m:
        raise NotExact(message)
    leaf, kinds = m.group(1).rsplit("/", 1)[-1], (m.group(2), m.group(3))
    if not _PLAIN_KEY.fullmatch(leaf) or not all(k in _KIND_START for k in kinds):
        raise NotExact(message)
    key = rb'"' + re.escape(leaf.encode()) + rb'"\s*:\s*'
    # the kind Arrow met second is the rarer one in most chunks: scanned first, and the
    # other kind's only when the first holds more than half of the key's appearances
    # (counted without a regular expression; either choice is exact, the rarer is faster)
    found = [m.start() for m in re.finditer(key + _KIND_START[kinds[1]], chunk)]
    if 2 * len(found) > chunk.count(b'"' + leaf.encode() + b'"'):
        other = [m.start() for m in re.finditer(key + _KIND_START[kinds[0]], chunk)]
        found = min(found, other, key=len)
    rarer = {bisect.bisect_right(starts, x) - 1 for x in found} - taken
    if not rarer:
        raise NotExact(message)
    return rarer


def _read(chunk: bytes, schema: pa.Schema | None, unexpected: str = "error") -> pa.Table:
    parse = (
        pj.ParseOptions()
        if schema is None
        else pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior=unexpected)
    )
    read = pj.ReadOptions(use_threads=False, block_size=BLOCK_BYTES)
    try:
        table = pj.read_json(BytesIO(chunk), read_options=read, parse_options=parse)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise NotExact(str(exc)) from None
    _check_rows(chunk, table.num_rows)
    return table


def _columns(
    arrays: Iterable[tuple[str, pa.Array | pa.ChunkedArray]], prefix: str | None,
    out: dict[str, pa.Array],
) -> None:  # fmt: skip
    """Structs flattened depth first into `path: column` (keys escaped as in the paths)."""
    for name, arr in arrays:
        k = escape_key(name)
        path = k if prefix is None else f"{prefix}.{k}"
        arr = one_array(arr)
        t = arr.type
        if pa.types.is_struct(t) and t.num_fields:
            children = arr.flatten()  # a field is null where its object is null
            _columns(((f.name, c) for f, c in zip(t, children, strict=True)), path, out)
        else:
            out[path] = arr


def one_array(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as one array (its single chunk as it is)."""
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr


def table_columns(table: pa.Table) -> dict[str, pa.Array]:
    out: dict[str, pa.Array] = {}
    _columns(zip(table.column_names, table.columns, strict=True), None, out)
    return out


def _check_numbers(columns: dict[str, pa.Array]) -> None:
    for arr in columns.values():
        if pa.types.is_float64(arr.type) and arr.null_count < len(arr):
            size = pc.abs(arr)
            if pc.max(size).as_py() >= _INT_LIMIT:
                raise NotExact("a float column beyond 2**53")
            zeros = arr.filter(pc.equal(arr, 0.0))
            if len(zeros) and pc.any(pc.less(pc.divide(1.0, zeros), 0.0)).as_py():
                raise NotExact("-0 in a float column")
        elif pa.types.is_list(arr.type) and pa.types.is_floating(arr.type.value_type):
            raise NotExact("an array of floats")


def _paths(schema: pa.Schema) -> list[str]:
    """The schema's flattened paths in its order, which is tree order (Arrow adds the
    fields of each object in order of first appearance)."""
    out: list[str] = []

    def walk(fields: Iterable[pa.Field], prefix: str | None) -> None:
        for f in fields:
            k = escape_key(f.name)
            path = k if prefix is None else f"{prefix}.{k}"
            if pa.types.is_struct(f.type) and f.type.num_fields:
                walk(f.type, path)
            else:
                out.append(path)

    walk(schema, None)
    return out


# ---- the two passes ------------------------------------------------------------------

Check = Callable[[], None]


def chunks_of(segments: Iterable[list[Any]]) -> Iterator[tuple[str, int, bytes]]:
    """(file name, offset, chunk) of a partition's segments."""
    for path, start, end in segments:
        name = Path(str(path)).name
        for offset, chunk in line_chunks(str(path), int(start), int(end)):
            yield name, offset, chunk


def _known(t: pa.DataType | pa.Schema) -> list[pa.Field]:
    """The fields worth giving the reader of the next chunk: not the ones that have held
    only nulls, `{}` or `[]` so far (their type is still open)."""
    out = []
    for f in t:
        ft = f.type
        if pa.types.is_struct(ft):
            fields = _known(ft)
            if fields:
                out.append(f.with_type(pa.struct(fields)))
        elif pa.types.is_list(ft):
            if not pa.types.is_null(ft.value_type) and not pa.types.is_struct(ft.value_type):
                out.append(f)
        elif not pa.types.is_null(ft):
            out.append(f)
    return out


def warm_up() -> None:
    """Import pyarrow and run its first compute call (about 0.1 s; more where pandas is
    loaded, which the `exportd` command keeps out), so that a worker does it once, while
    idle, not during its first export."""
    pc.cast(pa.array([1]), pa.string())


def _read_inferring(chunk: bytes, known: pa.Schema | None) -> pa.Table:
    """A chunk read with the types known from the chunks before (faster: they are not
    inferred again) and new keys inferred; timestamps inferred are read again as text.
    The first chunk's types come from its first lines (read twice, instead of the
    whole chunk when a timestamp is inferred)."""
    if known is None and len(chunk) > SAMPLE_BYTES:
        cut = chunk.rfind(b"\n", 0, SAMPLE_BYTES) + 1
        with contextlib.suppress(NotExact):
            sample = _read(chunk[:cut], None) if cut else None
            if sample is not None:
                known = pa.schema(
                    _known(pa.schema([f.with_type(_as_text(f.type)) for f in sample.schema]))
                )
    table = None
    if known is not None:
        with contextlib.suppress(NotExact):  # a type changed: infer it all
            table = _read(chunk, known, "infer")
    if table is None:
        table = _read(chunk, None)
    as_text = pa.schema([f.with_type(_as_text(f.type)) for f in table.schema])
    if as_text != table.schema:
        table = _read(chunk, as_text)
    return table


@dataclass(frozen=True)
class CellCache:
    """Where a header pass keeps the rendered cells of its chunks (Arrow IPC streams, one
    per chunk, under the task's parts prefix) for the export pass to join."""

    storage: Storage
    folder: str
    opts: CsvOptions

    def key(self, index: int) -> str:
        return f"{self.folder}c{index:05d}.arrows"


def _arrow_cells(table: pa.Table, csv: ArrowCsv) -> dict[str, pa.Array]:
    columns = table_columns(table)
    _check_numbers(columns)
    out = {}
    try:
        for path, arr in columns.items():
            cells = csv.cells(arr)
            if cells is not None:
                out[path] = cells
    except Unsupported as exc:
        raise NotExact(str(exc)) from None
    return out


def _python_paths_and_cells(
    docs: list[Any], opts: CsvOptions
) -> tuple[list[str], dict[str, pa.Array]]:
    """The paths of a chunk (in order of first appearance, as `Flattener.add_paths` gives
    them: they are the keys `flatten` makes) and its cells by the generic writer (which
    renders each value by its type, so a column's cells do not depend on the rows around
    them), from one flattening of each document."""
    flat = Flattener("json")
    rows = [flat.flatten(d) for d in docs]
    keys: dict[str, Any] = {}
    for row in rows:
        keys.update(row)  # new keys go last, in the row's order; known ones keep their place
    paths = list(keys)
    check_width(paths)
    return paths, _python_cells(rows, paths, opts)


def _python_cells(
    rows: list[dict[str, Any]], paths: list[str], opts: CsvOptions
) -> dict[str, pa.Array]:
    enc = CsvEncoder(opts, max(len(paths), 2))
    return {
        p: pa.array(enc.column(i, [r.get(p) for r in rows]), pa.string())
        for i, p in enumerate(paths)
    }


def _mixed(
    chunk: bytes, messages: list[str], known: pa.Schema | None, name: str, offset: int,
    opts: CsvOptions | None, csv: ArrowCsv | None,
) -> tuple[list[str], int, dict[str, pa.Array], pa.Schema]:  # fmt: skip
    """A chunk whose key changes type (Arrow's `message`): the lines of the rarer kind go
    through Python, the rest through Arrow; the paths (Arrow's order), the documents, and
    with `csv` the cells of every path in line order, and the schema Arrow read. NotExact
    when this would differ from the Python path's result (see the module's docstring)."""
    lines = chunk.split(b"\n")
    starts = [0, *itertools.accumulate(len(line) + 1 for line in lines)][:-1]
    taken: set[int] = set()
    for message in messages[:-1]:  # the keys that changed type in the chunk before
        taken |= _conflict_lines(message, chunk, starts, taken)
    message = messages[-1]
    for _ in range(MAX_SPLITS):
        taken |= _conflict_lines(message, chunk, starts, taken)
        pieces, pos = [], 0
        for i in sorted(taken):
            pieces.append(chunk[pos : starts[i]])
            pos = starts[i] + len(lines[i]) + 1
        rest = b"".join([*pieces, chunk[pos:]])
        try:
            table = _read_inferring(rest, known)
            break
        except NotExact as exc:
            message = str(exc)
            messages.append(message)
    else:
        raise NotExact("too many keys change type")
    _check_bytes(rest, table.schema)
    paths = _paths(table.schema)
    check_width(paths)
    # a document per line that is not blank: the document number of each taken line
    blank = [i for i, line in enumerate(lines) if not line or line.isspace()]
    py_lines = sorted(taken)
    py_docs = [i - bisect.bisect_left(blank, i) for i in py_lines]
    rows = len(lines) - len(blank)
    flat = Flattener("json")
    py_rows = []
    for i in py_lines:
        docs = documents_of(lines[i], name, offset + starts[i])
        if len(docs) != 1:
            raise NotExact("a taken line is not one document")
        py_rows.append(flat.flatten(docs[0]))
    if table.num_rows + len(py_rows) != rows:
        raise NotExact("documents miscounted")
    columns = table_columns(table)
    seen: set[str] = set()
    for k, (d, row) in enumerate(zip(py_docs, py_rows, strict=True)):
        before = d - k  # Arrow's rows before this document
        for path in row.keys() - seen:
            col = columns.get(path)
            if col is None:
                raise RareLineFirst("a rare line brings a new path", py_lines[k])
            if col.slice(0, before).null_count == before:  # no value seen before it
                raise RareLineFirst("a rare line brings a path first", py_lines[k])
            seen.add(path)
    if csv is None or opts is None:
        return paths, rows, {}, table.schema
    arrow_cells = _arrow_cells(table, csv)
    n_arrow = table.num_rows
    py_cells = _python_cells(py_rows, paths, opts)
    pick: list[int] = []
    done = 0  # Arrow rows placed
    for k, d in enumerate(py_docs):
        pick.extend(range(done, d - k))
        done = d - k
        pick.append(n_arrow + k)
    pick.extend(range(done, n_arrow))
    take = pa.array(pick, pa.int64())
    null = pa.scalar(opts.null, pa.string())
    out = {}
    for path in paths:
        mine = arrow_cells.get(path)
        if mine is None:
            mine = pa.nulls(n_arrow, pa.string()).fill_null(null)
        out[path] = pa.concat_arrays([mine.cast(pa.string()), py_cells[path]]).take(take)
    return paths, rows, out, table.schema


MAX_RARE_SPLITS = 16  # a chunk split around at most this many rare lines
NATIVE = True  # chunks first through the C reader where it is built (tests turn it off)


@functools.cache
def _jsoncells() -> ModuleType | None:
    try:
        from exportd.fastpaths import _jsoncells
    except ImportError:  # not built (a checkout without a compiler): Arrow and Python
        return None
    return _jsoncells


def _native_chunk(
    chunk: bytes, cache: CellCache | None
) -> tuple[list[str], int, dict[str, pa.Array]] | None:
    """(paths, documents, cells) of a chunk by the C reader (no cells without a cache);
    None where it does not give the Python path's result exactly."""
    native = _jsoncells() if NATIVE else None
    if native is None:
        return None
    opts = cache.opts if cache is not None else CsvOptions()
    delimiter, quote = opts.delimiter.encode(), opts.quote.encode()
    if len(delimiter) != 1 or len(quote) != 1:
        return None
    got = native.cells(
        chunk, delimiter, quote, opts.null.encode(), opts.spreadsheet_safe, cache is not None,
        MAX_COLUMNS,
    )  # fmt: skip
    if got is None:
        return None
    paths, rows, columns = got
    if cache is None:  # the paths only
        return paths, rows, {}
    cells = {
        path: pa.Array.from_buffers(
            pa.string(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )
        for path, (offsets, data) in zip(paths, columns, strict=True)
    }
    return paths, rows, cells


@dataclass
class _Pass:
    """What a header pass carries from chunk to chunk."""

    cache: CellCache | None
    known: pa.Schema | None = None
    changing: list[str] = field(default_factory=list)  # Arrow's words for keys that changed type
    splits: int = 0


def collect_headers(
    segments: Iterable[list[Any]], check: Check, cache: CellCache | None
) -> tuple[list[str], int, int]:
    """The header pass of a partition: its paths in tree order and its document count;
    with a cache, also the CSV cells of every chunk (returns how many chunks it wrote)."""
    lists: list[list[str]] = []
    documents = written = 0
    state = _Pass(cache)
    for name, offset, whole in chunks_of(segments):
        check()
        state.splits = 0
        for paths, rows, cells in _chunk_results(whole, name, offset, state):
            lists.append(paths)
            documents += rows
            if cache is not None and rows:
                table = pa.Table.from_arrays(list(cells.values()), names=list(cells))
                _write_table(cache.storage, cache.key(written), table, rows)
                written += 1
    return merge_headers(lists), documents, written


def _chunk_results(
    chunk: bytes, name: str, offset: int, state: _Pass
) -> Iterator[tuple[list[str], int, dict[str, pa.Array]]]:
    """(paths, documents, cells) of a chunk, read by Arrow where that is exact. A line
    that the mixed read takes out and that brings a path first splits the chunk around
    it: the lines before and after are chunks of their own (the merged header and the
    cells do not depend on where chunks end), the line itself takes the Python path."""
    if not chunk:
        return
    cache = state.cache
    native = _native_chunk(chunk, cache)
    if native is not None:
        yield native
        return
    opts = cache.opts if cache else None
    csv = ArrowCsv(cache.opts, 2) if cache else None
    cells: dict[str, pa.Array] = {}
    schema: pa.Schema | None = None
    rare: RareLineFirst | None = None
    if state.changing:  # likely again: straight to the mixed read
        try:
            paths, rows, cells, schema = _mixed(
                chunk, list(state.changing), state.known, name, offset, opts, csv
            )
        except RareLineFirst as exc:
            rare = exc
        except NotExact:
            pass
    if schema is None and rare is None:
        try:
            table = _read_inferring(chunk, state.known)
            _check_bytes(chunk, table.schema)
            paths, rows = _paths(table.schema), table.num_rows
            check_width(paths)
            if csv is not None:
                cells = _arrow_cells(table, csv)
            schema = table.schema
        except NotExact as exc:
            messages = [str(exc)]
            try:
                paths, rows, cells, schema = _mixed(
                    chunk, messages, state.known, name, offset, opts, csv
                )
                state.changing = messages
            except RareLineFirst as again:
                rare, state.changing = again, messages
            except NotExact:
                pass
    if rare is not None and state.splits < MAX_RARE_SPLITS:
        state.splits += 1
        lines = chunk.split(b"\n")
        start = sum(len(line) + 1 for line in lines[: rare.line])
        stop = min(start + len(lines[rare.line]) + 1, len(chunk))
        yield from _chunk_results(chunk[:start], name, offset, state)
        yield _python_chunk(chunk[start:stop], name, offset + start, cache)
        yield from _chunk_results(chunk[stop:], name, offset + stop, state)
        return
    if schema is not None:
        state.known = pa.schema(_known(schema))
        yield paths, rows, cells
    else:  # the Python path, whole
        yield _python_chunk(chunk, name, offset, cache)


def _python_chunk(
    chunk: bytes, name: str, offset: int, cache: CellCache | None
) -> tuple[list[str], int, dict[str, pa.Array]]:
    docs = documents_of(chunk, name, offset)
    if cache is not None:
        paths, cells = _python_paths_and_cells(docs, cache.opts)
        return paths, len(docs), cells
    flat = Flattener("json")
    keys: dict[str, None] = {}
    for doc in docs:
        flat.add_paths(doc, keys)
    paths = list(keys)
    check_width(paths)
    return paths, len(docs), {}


def _write_table(storage: Storage, key: str, table: pa.Table, rows: int) -> None:
    sink = pa.BufferOutputStream()
    meta = table.replace_schema_metadata({"rows": str(rows)})
    with pa.ipc.new_stream(sink, meta.schema) as writer:
        writer.write_table(meta)
    with storage.open_write(key, durable=False) as out:
        out.write(sink.getvalue().to_pybytes())


def _read_table(storage: Storage, key: str) -> tuple[pa.Table, int]:
    with storage.open_read(key) as fh:
        table = pa.ipc.open_stream(fh.read()).read_all()
    return table, int((table.schema.metadata or {})[b"rows"])


def cached_csv(
    cache: CellCache, chunks: int, header: list[str], check: Check
) -> Iterator[tuple[bytes, int]]:
    """The export pass from a header pass's cells: each chunk's cells joined in the merged
    header's order (the documents are not read again: the export writes what the
    header pass read, so no document can bring a key outside the header)."""
    csv = ArrowCsv(cache.opts, len(header))
    known = set(header)
    quote = cache.opts.quote
    for i in range(chunks):
        check()
        table, rows = _read_table(cache.storage, cache.key(i))
        columns = {
            name: one_array(col)
            for name, col in zip(table.column_names, table.columns, strict=True)
        }
        if not columns.keys() <= known:
            extra = sorted(columns.keys() - known)[:3]
            raise SourceError(
                f"documents changed since the header pass: new keys {extra}", "DOCUMENTS_CHANGED"
            )
        if len(header) == 1 and header[0] in columns:  # `\.` alone on a line is quoted
            col = columns[header[0]]
            columns[header[0]] = pc.if_else(pc.equal(col, "\\."), f"{quote}\\.{quote}", col)
        yield csv.rows([columns.get(k) for k in header], rows), rows
