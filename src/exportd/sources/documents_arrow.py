"""JSON Lines documents through Arrow (pyarrow.json, in C++), for both passes of a CSV/TSV
export with the merged header: the header pass infers each chunk's schema instead of
walking documents in Python, and the export pass reads each chunk with that schema and
renders it with `ArrowCsv`. The result is byte-identical to the Python path.

A partition is read in chunks of whole lines (about CHUNK_BYTES). Any chunk that Arrow
cannot give exactly as the Python path would goes through the Python path instead
(`flat_rows` and the generic CSV encoder; with the generic writer's rule for a column
of mixed types, cells do not depend on how rows are batched), so the output is the same:

- Arrow refuses it: a key whose type changes (a scalar in one document, an object or
  text in another), a document that is not an object, a key given twice, bad surrogates;
- not valid UTF-8 (Arrow would replace bytes that orjson refuses);
- a key holding an object somewhere and JSON `null` or `{}` elsewhere (the Python path
  gives that key a column of its own, Arrow cannot tell null from a missing key);
- in the export pass: a key outside the partition's header-pass schema (the file changed:
  the Python path then fails with DOCUMENTS_CHANGED if a column would be lost), a float
  column holding an integral value of 2**53 or more, or -0 (integers and floats share a
  float64 column in Arrow), arrays of floats or of objects, an unexpected type.

Strings that look like timestamps are read as text (the header pass stores its schema
with every inferred timestamp as a string, and the export pass reads with it).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from exportd.documents import Flattener, escape_key, flat_rows, merge_headers
from exportd.errors import SourceError
from exportd.formats.arrow_csv import ArrowCsv, Unsupported
from exportd.formats.text import CsvEncoder, CsvOptions

CHUNK_BYTES = 16 << 20
BLOCK_BYTES = 4 << 20
_INT_LIMIT = float(2**53)
_KEY_NULL = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*null')
_KEY_EMPTY = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*\{\s*\}')
_EMPTY_OBJECT = re.compile(rb"\{\s*\}")
_BLANK_LINE = re.compile(rb"^[ \t\r\x0b\x0c]*$", re.MULTILINE)


class NotExact(Exception):
    """This chunk must take the Python path."""


def line_chunks(path: str, start: int, end: int, size: int | None = None) -> Iterator[bytes]:
    """The lines that start in [start, end) of a file (as `paths.read_lines` gives them),
    in chunks of whole lines of about `size` bytes."""
    size = size or CHUNK_BYTES
    try:
        with open(path, "rb") as fh:
            if start > 0:
                fh.seek(start - 1)
                fh.readline()  # a line begun before `start` belongs to the previous segment
            pos = fh.tell()
            carry = b""
            while pos < end:
                block = fh.read(size)
                data = carry + block
                base = pos - len(carry)
                if not block:  # end of file
                    if data:
                        yield data
                    return
                stop = data.find(b"\n", max(end - 1 - base, 0))
                if stop >= 0 and base + stop + 1 >= end:  # the last line of the range ends here
                    yield data[: stop + 1]
                    return
                cut = data.rfind(b"\n") + 1
                if cut:
                    yield data[:cut]
                carry = data[cut:]
                pos += len(block)
    except OSError as exc:
        raise SourceError(
            f"cannot read {Path(path).name}: {exc.strerror}", "SOURCE_UNAVAILABLE"
        ) from None


def documents_of(chunk: bytes, where: str) -> list[Any]:
    """The documents of a chunk as the Python path reads them (blank lines skipped)."""
    from exportd.sources.documents import load_document

    loads, docs = orjson.loads, []
    for line in chunk.split(b"\n"):
        try:
            docs.append(loads(line))
        except orjson.JSONDecodeError:
            if line.strip():
                load_document(line, where)
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


def _unify(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """One type to read both with, or None."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if {a, b} == {pa.int64(), pa.float64()}:
        return pa.float64()
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        fields = {f.name: f.type for f in a}
        for f in b:
            t = _unify(fields[f.name], f.type) if f.name in fields else f.type
            if t is None:
                return None
            fields[f.name] = t
        return pa.struct(list(fields.items()))
    if pa.types.is_list(a) and pa.types.is_list(b):
        t = _unify(a.value_type, b.value_type)
        return None if t is None else pa.list_(t)
    return None


def unify_schemas(schemas: Iterable[pa.Schema]) -> pa.Schema | None:
    """One schema for the chunks: where two chunks disagree on a key's type, the first
    chunk's is kept (the chunks that disagree take the Python path in the export)."""
    fields: dict[str, pa.DataType] = {}
    for schema in schemas:
        for f in schema:
            t = _unify(fields[f.name], f.type) if f.name in fields else f.type
            if t is not None:
                fields[f.name] = t
    return pa.schema(list(fields.items())) if fields else None


def schema_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def schema_of(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


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


def _read(chunk: bytes, schema: pa.Schema | None) -> pa.Table:
    parse = (
        pj.ParseOptions()
        if schema is None
        else pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
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
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
        t = arr.type
        if pa.types.is_struct(t) and t.num_fields:
            children = arr.flatten()  # a field is null where its object is null
            _columns(((f.name, c) for f, c in zip(t, children, strict=True)), path, out)
        else:
            out[path] = arr


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


def chunks_of(segments: Iterable[list[Any]]) -> Iterator[tuple[str, bytes]]:
    for path, start, end in segments:
        for chunk in line_chunks(str(path), int(start), int(end)):
            yield Path(str(path)).name, chunk


def collect_headers(
    segments: Iterable[list[Any]], check: Check
) -> tuple[list[str], int, str | None]:
    """The header pass of a partition: its paths in tree order, its document count, and
    the schema to read it with in the export pass (None when no chunk could be read
    by Arrow)."""
    lists: list[list[str]] = []
    schemas: list[pa.Schema] = []
    documents = 0
    flat = Flattener("json")
    for name, chunk in chunks_of(segments):
        check()
        try:
            table = _read(chunk, None)
            _check_bytes(chunk, table.schema)
        except NotExact:
            keys: dict[str, None] = {}
            docs = documents_of(chunk, f"{name} (a line of it)")
            for doc in docs:
                flat.add_paths(doc, keys)
            lists.append(list(keys))
            documents += len(docs)
            continue
        lists.append(_paths(table.schema))
        schemas.append(pa.schema([f.with_type(_as_text(f.type)) for f in table.schema]))
        documents += table.num_rows
    schema = unify_schemas(schemas)
    return merge_headers(lists), documents, None if schema is None else schema_text(schema)


class ArrowDocumentCsv:
    """The export pass of a partition into CSV rows in the merged header's order."""

    def __init__(self, schema: pa.Schema, header: list[str], opts: CsvOptions) -> None:
        self.schema = schema
        self.header = header
        self.opts = opts
        self.csv = ArrowCsv(opts, len(header))
        self.python_chunks = 0

    def chunk_csv(self, name: str, chunk: bytes) -> tuple[bytes, int]:
        """The CSV text of one chunk and its row count."""
        try:
            if not self.header:
                raise NotExact("no columns")
            table = _read(chunk, self.schema)
            _check_bytes(chunk, self.schema)
            columns = table_columns(table)
            _check_numbers(columns)
            if not columns.keys() <= set(self.header):
                raise NotExact("a path outside the header")
            cells = [
                None if (c := columns.get(k)) is None else self.csv.cells(c) for k in self.header
            ]
            return self.csv.rows(cells, table.num_rows), table.num_rows
        except (NotExact, Unsupported):
            self.python_chunks += 1
            return self._python(name, chunk)

    def _python(self, name: str, chunk: bytes) -> tuple[bytes, int]:
        docs = documents_of(chunk, f"{name} (a line of it)")
        rows = [
            r
            for batch in flat_rows([[(d,) for d in docs]], self.header, "json", True)
            for r in batch
        ]
        return CsvEncoder(self.opts, len(self.header)).encode(rows).encode("utf-8"), len(rows)
